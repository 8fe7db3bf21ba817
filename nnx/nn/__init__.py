"""The layer library.

Every layer is a plain :class:`nnx.Module`. Conventions shared by all of them:

* ``dtype`` is the computation dtype (None: inferred from inputs and parameters),
  ``param_dtype`` the storage dtype of parameters, ``precision`` the matmul precision;
  ``*_init`` arguments take initializers from :mod:`nnx.initializers`.
* Input sizes that can be inferred may be ``None`` (lazy shape inference): parameters are
  created on the first call from the input's shape, with the Rngs given at construction.
  ``nnx.lazy_init(model, *example_args)`` materialises a whole model without computing.
* Bad configuration fails at construction (:class:`nnx.errors.ConfigError`); an input that
  does not fit fails at call time (:class:`nnx.errors.ShapeError`) naming the layer, its
  configuration and its path in the model.
"""
