"""Quality measured the way the field measures it: metrics, scoring of methods on pairs and volumes,
reports, figures."""
