"""The shared leaves every stage uses: errors and problems, frozen values, atomic files,
content hashing, import paths, TOML positions and the event log's format."""
