"""A fusion run: its options, the pipeline (:func:`~MedFusionLib.fusion.pipeline.fuse_volumes`), the slice engine
and the cohort runner."""
