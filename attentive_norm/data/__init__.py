"""Data: the bundled digits dataset, ImageFolder loading, transforms and mixup."""
