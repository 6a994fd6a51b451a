//! CUDA start-up (feature `cuda`): on a machine without an NVIDIA driver, loading is
//! `Error::Backend` saying what CUDA needs, not a panic; with a GPU it simply loads.
#![cfg(feature = "cuda")]

mod common;

use paligemma::{Error, Model, backend::Cuda};

#[test]
fn cuda_without_a_driver_is_an_error() {
    let dir = common::fixtures().join("pg1-tiny");
    match Model::<Cuda>::from_pretrained(&dir, &Default::default()) {
        Err(Error::Backend(msg)) => {
            eprintln!("CUDA could not start: {msg}");
            assert!(msg.contains("CUDA") && msg.contains("driver"), "{msg}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => eprintln!("CUDA started: nothing to check"),
    }
}
