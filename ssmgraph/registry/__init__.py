"""The registry: what plugins declare and the host that collects it.

- :mod:`~ssmgraph.registry.params` and :mod:`~ssmgraph.registry.specs`: the records plugins
  return (parameters; blocks, tasks, merge methods);
- :mod:`~ssmgraph.registry.hookspecs`: the hooks that return them;
- :mod:`~ssmgraph.registry.loading`: finding plugins (entry points, ssmgraph's own included)
  and importing them in isolation;
- :mod:`~ssmgraph.registry.records` and :mod:`~ssmgraph.registry.plugins`: what is known about
  each plugin, and the :class:`~ssmgraph.registry.plugins.Registry` itself;
- :mod:`~ssmgraph.registry.references`: implementations named ``"module:function"``.

It imports nothing from the layers above it: built-ins are found by their entry points, not
imported by name. Plugin authors use :mod:`ssmgraph.plugin` instead of these modules.
"""
