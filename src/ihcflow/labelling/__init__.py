"""Image labelling and the feedback loop, with Label Studio (``ihcflow label ...``).

select  (:mod:`~ihcflow.labelling.select`): rank new images by the registered model's doubt
        (margin or entropy), by how unlike the training images they are, and by class balance;
        write a batch folder with a manifest of why each image was chosen.
push    (:mod:`~ihcflow.labelling.push`): send a batch to Label Studio as tasks with the model's
        prediction as a pre-annotation, and write the same tasks as an import file.
pull    (:mod:`~ihcflow.labelling.pull`): read the annotations back (majority vote, agreement),
        write the accepted images into ``data/`` with a provenance table, ``dvc add data``.
compare (:mod:`~ihcflow.labelling.compare`): the registered model before and after retraining,
        on the test images neither was trained on.

The Label Studio JSON format lives in :mod:`~ihcflow.labelling.tasks`, its REST API in
:mod:`~ihcflow.labelling.studio` (plain HTTP: no Label Studio package is needed), and every call
into the rest of the library goes through :mod:`~ihcflow.labelling.model`. The loop, the files
and the commands: docs/labelling.md.
"""
