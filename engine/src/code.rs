//! A TorchScript model is a program: its archive holds the code its forward pass runs,
//! compiled again when it loads. The fleet runs models in its workers, beside their object
//! store, Redis and broker credentials and other tenants' cached models, so before any model
//! is loaded its code is read and refused if it calls what reaches outside the tensors it is
//! given: a file read (`torch.from_file`, which reads any file the worker can: a config with
//! secrets, another tenant's model), distributed communication (`c10d`, sockets), custom
//! classes, or operators outside libtorch's own namespaces (code the fleet did not build).
//!
//! TorchScript has no dynamic attribute lookup, so every operator a model calls is named in
//! its code as written. This is a check on what the fleet loads, not a sandbox: the
//! operator's review when publishing a model stays the first line (see README, Operations).

use std::io::Read;
use std::path::Path;

/// Substrings of TorchScript code that refuse a model, and why.
const FORBIDDEN: [(&str, &str); 4] = [
    ("from_file", "reads a file from the worker's disk"),
    ("c10d", "opens network connections (torch.distributed)"),
    ("torch.distributed", "opens network connections"),
    ("torch.classes.", "uses a custom class from a native library"),
];

/// Operator namespaces a model may call through `torch.ops.<namespace>`.
const ALLOWED_OPS: [&str; 4] = ["aten", "prim", "quantized", "prepacked"];

/// Largest code file read; larger ones are refused.
const MAX_CODE_BYTES: u64 = 64 << 20;

/// Reads the code in the TorchScript archive at `path`; `Err` names the file, the call and why.
pub fn vet(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| format!("not a TorchScript archive: {e}"))?;
    let mut code_files = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| format!("archive entry {i}: {e}"))?;
        let name = entry.name().to_string();
        if !(name.contains("/code/") && name.ends_with(".py")) {
            continue;
        }
        code_files += 1;
        if entry.size() > MAX_CODE_BYTES {
            return Err(format!("{name} holds {} bytes of code, over {MAX_CODE_BYTES}", entry.size()));
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| format!("{name}: {e}"))?;
        check_code(&name, &text)?;
    }
    if code_files == 0 {
        return Err("no TorchScript code in the archive".into());
    }
    Ok(())
}

/// Vets the TorchScript file at `path`, then loads it onto `device`: how every model file
/// the fleet runs is loaded.
pub fn load(path: &Path, device: tch::Device) -> Result<tch::CModule, String> {
    vet(path).map_err(|e| format!("refused: {e}"))?;
    tch::CModule::load_on_device(path, device).map_err(|e| e.to_string())
}

/// Checks one code file's text.
fn check_code(name: &str, text: &str) -> Result<(), String> {
    if let Some((call, why)) = FORBIDDEN.iter().find(|(call, _)| text.contains(call)) {
        return Err(format!("{name} calls {call}, which {why}: the fleet does not load it"));
    }
    for (at, _) in text.match_indices("ops.") {
        let namespace: String = text[at + 4..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let qualified = text[..at].ends_with("torch.");
        if qualified && !ALLOWED_OPS.contains(&namespace.as_str()) {
            return Err(format!("{name} calls operators of torch.ops.{namespace}, outside libtorch's own"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_that_reaches_outside_its_tensors_is_refused_and_plain_math_passes() {
        let plain =
            "def forward(self, x: Tensor) -> Tensor:\n  y = torch.ops.aten.relu(x)\n  return torch.sigmoid(y)\n";
        assert_eq!(check_code("m/code/__torch__.py", plain), Ok(()));
        for bad in [
            "  env = torch.from_file(\"/etc/fleet.toml\", False, 4096, dtype=0)\n",
            "  _0 = torch.ops.c10d.allreduce_([x])\n",
            "  s = torch.classes.mylib.Socket.__new__(x)\n",
            "  y = torch.ops.mylib.exfiltrate(x)\n",
        ] {
            let refused = check_code("m/code/__torch__.py", bad).unwrap_err();
            assert!(refused.starts_with("m/code/__torch__.py calls"), "{refused}");
        }
    }
}
