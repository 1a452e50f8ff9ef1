"""Analysis layer: evaluation and surprisal of texts, LSTM internals, the long-range demo, corpus statistics, speed."""
