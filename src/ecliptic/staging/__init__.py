"""Staging: bringing a session's data resources into its storage directory before compute starts."""

from ecliptic.staging.download import StagedFile, StagingError, filename_for, stage

__all__ = ["StagedFile", "StagingError", "filename_for", "stage"]
