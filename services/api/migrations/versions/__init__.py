"""One module per revision, ``r<rev>_<slug>.py``: written by ``dataengine db revision``, edited by hand."""
