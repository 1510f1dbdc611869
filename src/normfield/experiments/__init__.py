"""Experiments: settings → cells → sweep → frame.

Each module here joins one engine's frozen settings (whose ``.cells(seed)``
lists the sweep cells) and its module-level cell function with the runner.
Engines never import the runner; the runner never imports an engine; these
modules import both. Claims and the CLI call them.
"""
