"""ClientApp: train/evaluate handlers and the local DP-SGD trainer."""
