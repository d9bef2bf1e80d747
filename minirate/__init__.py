"""minirate: training deep spiking neural networks from scratch on NumPy/CuPy."""
