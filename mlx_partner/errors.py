"""The exceptions a user may see.

The library raises these; the CLI prints their message as one plain sentence on stderr and
exits 1. Every message says what is wrong and what to do, and never contains a secret.
"""

from __future__ import annotations


class PartnerError(Exception):
    """An error the user can act on. Its message is shown as is, without a traceback."""


class ConfigError(PartnerError):
    """partner.toml or an environment setting is wrong."""


class SourceError(PartnerError):
    """The author's documents or profile cannot be used."""


class GenerationError(PartnerError):
    """The LLM API could not be used (credentials, endpoint, refusal)."""


class DatasetError(PartnerError):
    """Pairs or dataset files are missing or unusable."""


class TrainingError(PartnerError):
    """Training could not start or had to stop."""


class ModelError(PartnerError):
    """A model cannot be found, loaded, imported or fused."""


class WorkspaceLocked(PartnerError):
    """Another mlx-partner command is writing this workspace."""


class CorrectionError(PartnerError):
    """A correction cannot be saved, found or removed (data/corrections.jsonl)."""
