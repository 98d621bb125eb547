"""Pure computations: arrays and metadata in, frozen dataclasses out. No files, plots or printing."""
