"""Per-example gradients g_c(z) = ∇_θ ℓ(f_θc(x), y), restricted to the selected layers."""
