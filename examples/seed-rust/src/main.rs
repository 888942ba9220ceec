//! Says which CPU it was compiled for and which one it runs on (`uname -m`), and a checksum
//! that is the same on every platform: the same program, however it was built.

use std::process::Command;

/// FNV-1a over the bytes of `text`, 64-bit: wrapping arithmetic, so every CPU agrees.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

fn main() {
    let machine = Command::new("uname")
        .arg("-m")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|err| format!("unknown ({err})"));
    let sum = (0..1000).map(|i| fnv1a(&format!("seed-rust {i}"))).fold(0u64, |a, b| a ^ b);
    println!("seed-rust built for {}, running on {} ({:016x})", std::env::consts::ARCH, machine, sum);
}
