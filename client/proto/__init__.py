"""Generated gRPC code for the device agent (see device.proto; do not edit by hand)."""
