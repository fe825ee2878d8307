"""What a run leaves behind: the run folder's layout, written so that a crash never half-writes."""
