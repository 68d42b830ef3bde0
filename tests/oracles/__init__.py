"""NumPy reference implementations written straight from the papers' formulas (never from
keras_convx's code). Each oracle works in float64 and may offer an analytic `vjp`."""
