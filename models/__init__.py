"""tritoncnn.models: CNNs on tritoncnn kernels.

* layers: ``Conv2d``, ``Conv2dReLU``, ``Conv2dReLUPool``, ``MaxPool2d``, ``AvgPool2d``,
  ``AdaptiveAvgPool2d``, ``Linear``, ``LinearReLU`` (subclasses of the torch.nn layers: same
  constructors, parameters and state_dict);
* ``convert(model)``: a torch.nn model with those layers swapped in, weights carried over;
* the zoo: ``lenet5``, ``convnetjs_cifar10``, ``vgg11``, ``vgg16``, ``get_model(name, backend)``;
* ``build(spec)``: a CNN from the lecture's pattern string, e.g.
  ``[(CONV3-32-RELU)*2-POOL2]*3-(FC256-RELU)*1-FC10`` (grammar in :mod:`.spec`);
* ``activation_maps(model, x)``: every layer's output for one input, and
  ``plot_activation_maps``, the lecture's figure of them (:mod:`.activations`);
* :mod:`.data` (digits, MNIST, CIFAR-10, synthetic) and :mod:`.train` (``tritoncnn train``).
"""

from .activations import activation_maps, plot_activation_maps
from .convert import ConvertReport, convert
from .layers import (AdaptiveAvgPool2d, AvgPool2d, Conv2d, Conv2dReLU, Conv2dReLUPool, Linear,
                     LinearReLU, MaxPool2d)
from .spec import SpecError, build, parse
from .zoo import convnetjs_cifar10, get_model, lenet5, vgg11, vgg16

__all__ = [
    "Conv2d", "Conv2dReLU", "Conv2dReLUPool", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "Linear", "LinearReLU",
    "convert", "ConvertReport",
    "build", "parse", "SpecError",
    "get_model", "lenet5", "convnetjs_cifar10", "vgg11", "vgg16",
    "activation_maps", "plot_activation_maps",
]
