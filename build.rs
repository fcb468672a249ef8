//! Records where the nginx binary that `nginx-sys` built lives, so the
//! Makefile can find it without globbing `target/`.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_BUILD_DIR");
    let Ok(build_dir) = env::var("DEP_NGINX_BUILD_DIR") else {
        return;
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // target/<profile>/build/<crate>-<hash>/out -> target/<profile>
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR lies three levels below the profile directory");
    let binary = PathBuf::from(build_dir).join("nginx");
    fs::write(
        profile_dir.join("nginx-path"),
        format!("{}\n", binary.display()),
    )
    .expect("write nginx-path");
}
