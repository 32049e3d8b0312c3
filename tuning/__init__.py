"""Hyperparameter search over keras_cnn builders with keras-tuner."""
