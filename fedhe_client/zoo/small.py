"""Small vision models written in plain torch: linear, MLP, LeNet-5, the DLG LeNet, the CNN."""

from __future__ import annotations

from torch import nn

Shape = tuple[int, ...]


def _image(in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"this model needs images (C, H, W), got input shape {in_shape}")
    c, h, w = in_shape
    return int(c), int(h), int(w)


def linear(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """Multinomial logistic regression on the flattened input."""
    n = 1
    for d in in_shape:
        n *= int(d)
    return nn.Sequential(nn.Flatten(), nn.Linear(n, classes))


def mlp(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """Two-layer perceptron."""
    n = 1
    for d in in_shape:
        n *= int(d)
    return nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def lenet(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling (61,706 parameters at 1x28x28, 10 classes).

    The first convolution keeps the size (padding 2, as for 28x28 MNIST); the second is
    unpadded when the map is at least 10 wide, else padded so tiny inputs still fit.
    Weights are He-initialised (ReLU), biases zero: it learns at the default SGD settings.
    """
    c, h, w = _image(in_shape)
    h1, w1 = h // 2, w // 2
    pad = 0 if min(h1, w1) >= 10 else 2
    h2, w2 = (h1 + 2 * pad - 4) // 2, (w1 + 2 * pad - 4) // 2
    model = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, classes),
    )
    for layer in model:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return model


def lenet_dlg(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """The LeNet of the DLG paper (sigmoid, strided convolutions); the audit's target model.

    Not a useful classifier (it stays near chance when trained); for H, W divisible by 4.
    """
    c, h, w = _image(in_shape)
    return nn.Sequential(
        nn.Conv2d(c, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(12 * (h // 4) * (w // 4), classes),
    )


def cnn(in_shape: Shape, classes: int, hidden: int) -> nn.Module:
    """The FedML-HE paper's CNN: 2 conv + 2 FC (1,663,370 parameters at 1x28x28, 10 classes)."""
    c, h, w = _image(in_shape)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 512),
        nn.ReLU(),
        nn.Linear(512, classes),
    )
