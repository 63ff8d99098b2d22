"""Other frameworks' checkpoints in and out: Caffe, Caffe2 pickles, VISSL, mapped PyTorch state dicts."""
