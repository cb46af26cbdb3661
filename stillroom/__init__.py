"""stillroom: distil the repetitive calls you send to cloud LLMs into small local students."""

__version__ = "0.1.0"
