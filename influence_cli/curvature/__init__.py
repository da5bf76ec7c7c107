"""Curvature for influence functions g′ᵀ(G + λI)⁻¹g: EK-FAC (:mod:`.ekfac`) and Arnoldi (:mod:`.arnoldi`).
A stage between the gradients and the session (the layers contract in pyproject.toml)."""
