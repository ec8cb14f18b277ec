"""Reports for people: the pull-request comment that says what a change did to the model.

``ihcflow.reporting.pr`` builds it (``collect`` -> ``render``); ``ihcflow.reporting.cli`` is
``ihcflow report pr``.
"""
