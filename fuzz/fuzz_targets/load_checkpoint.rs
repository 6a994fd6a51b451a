//! A checkpoint directory with one file replaced by fuzzer bytes (the first input byte
//! picks which: config, tokenizer, shard index, a weight shard, the image processor
//! config), loaded with `Model::from_pretrained`; a model that loads then generates a
//! few tokens. Nothing may panic, abort or exhaust memory: every bad file is an error.
//!
//! Seeds are the valid files of `tests/fixtures/pg1-tiny` (`scripts/fuzz_seeds.sh`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use paligemma::{GenerateOptions, Model, backend::Flex};

/// The files a fuzzer byte can replace, in selector order.
const FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors.index.json",
    "model-00002-of-00002.safetensors",
    "preprocessor_config.json",
];

/// A private copy of the fixture, made once per process.
fn checkpoint() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pg1-tiny");
        let dir = std::env::temp_dir().join(format!("paligemma-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for entry in std::fs::read_dir(&fixture).expect("fixture") {
            let entry = entry.expect("fixture entry");
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy fixture");
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let name = FILES[usize::from(pick) % FILES.len()];
    let dir = checkpoint();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pg1-tiny");
    std::fs::write(dir.join(name), bytes).expect("write the fuzzed file");
    if let Ok(model) = Model::<Flex>::from_pretrained(dir, &Default::default()) {
        let image = image::DynamicImage::new_rgb8(8, 8);
        let options = GenerateOptions::default().max_new_tokens(3);
        let _ = model.generate(&image, "caption en", &options);
    }
    std::fs::copy(fixture.join(name), dir.join(name)).expect("restore the fixture file");
});
