"""The ResNet18 classifier: architecture, published weights, augmentation, training, inference."""
