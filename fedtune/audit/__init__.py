"""Auditing a finished run: score its final model on the canaries and write ``privacy/audit.json``
(the statistics are ``fedtune.privacy.audit``)."""
