//! The examples in README.md are the example files, verbatim: the files are built with the
//! workspace and run by the integration tests (tests/streaming.rs, tests/extensions.rs), so the
//! README's code is too.

use std::path::Path;

#[test]
fn readme_examples_are_the_example_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut checked = 0;
    for (at, _) in readme.match_indices("<!-- example: ") {
        let rest = &readme[at + "<!-- example: ".len()..];
        let (path, rest) = rest.split_once(" -->").expect("a closed marker");
        let block = rest
            .split_once("```rust\n")
            .and_then(|(_, code)| code.split_once("```"))
            .map(|(code, _)| code)
            .expect("a rust block after the marker");
        let file =
            std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            block, file,
            "README.md's copy of {path} differs from the file"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "the streaming and extension examples");
}
