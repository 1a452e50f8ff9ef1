"""Base layer: errors, the version, file helpers and the device/precision policy. Imports nothing of charlstm."""
