"""EdgeML: train a CIFAR-10 classifier, quantize it to INT8, and measure OOD detection."""
