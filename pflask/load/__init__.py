"""A manifest file, or the original flags, -> a checked manifest and the typed
Manifest: formats, positions, `${VAR}`, `extends`, the schema and the rules
it cannot state.  Knows nothing about namespaces.
"""
