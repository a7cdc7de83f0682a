"""Maximum-likelihood fitting of any density model (flows, autoregressive models, PixelCNN,
destructors' flows) and the dequantization of discrete data."""
