"""Model work away from the robot: labelled data sets (``datasets``), scores (``metrics``,
``evaluate``), confidence calibration (``temperature``), fine-tuning (``train``) and
teacher labelling for distillation (``teacher``, ``labelling``). The robot path
(segmenter, backends, node, bag tool) never imports this package; the ``evaluate``,
``train``, ``label`` and ``weights --pack`` commands do."""
