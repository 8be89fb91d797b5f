"""Op registration: fake impls, autograd formulas and backend entry points, one module per op."""
