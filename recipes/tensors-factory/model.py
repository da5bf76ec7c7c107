"""The model of the tensors-factory recipe: a small MLP classifier."""

from torch import nn


def build_mlp(in_dim: int = 20, hidden: int = 32, num_classes: int = 4) -> nn.Module:
    """in_dim → hidden → hidden → num_classes with tanh activations."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, num_classes))
