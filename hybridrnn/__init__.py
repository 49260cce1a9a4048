"""hybridrnn: LSTM, GRU and hybrid LSTM-GRU networks for PyTorch."""
__version__ = "0.1.0"
