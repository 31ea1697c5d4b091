//! The storage transformers of kube-apiserver, one module per provider.
