"""Reports for people: ``format`` (one number formatter and table layout), ``metrics`` (the test
metrics as text, ``ihcflow report metrics``), ``pr`` (the pull-request comment: ``collect`` ->
``render``) and ``cli`` (``ihcflow report``).
"""
