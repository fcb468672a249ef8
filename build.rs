//! Records where the nginx binary that `nginx-sys` built lives, so the
//! Makefile can find it without globbing `target/`, and emits `nginxX_Y_Z`
//! cfgs for the nginx version the bindings were generated from (the vendored
//! 1.28 or a distro's packaged source, see distro/build.sh).
use std::{env, fs, path::PathBuf};

/// nginx versions the sources check with `#[cfg(nginxX_Y_Z)]`: set when the
/// bindings' nginx is at least that version.
const VERSION_CHECKS: &[(u64, &str)] = &[
    // ngx_table_elt_t.next, multi-value header lists
    (1_023_000, "nginx1_23_0"),
    // ngx_ssl_connection_certificate's ngx_ssl_cache_t argument
    (1_027_004, "nginx1_27_4"),
];

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    let version: Option<u64> = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.parse().ok());
    for &(number, cfg) in VERSION_CHECKS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if version.is_some_and(|v| v >= number) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }

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
