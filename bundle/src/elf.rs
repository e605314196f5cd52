//! Is an executable static? Read from its ELF program headers: a dynamic
//! one names an interpreter (PT_INTERP, `/lib64/ld-linux-x86-64.so.2`), the
//! loader of the build machine's glibc. No crate: three fields of the header.

const PT_INTERP: u32 = 3;

/// `Err` says why `bytes` is not a static x86_64 ELF executable.
pub(crate) fn check_static(bytes: &[u8]) -> Result<(), String> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF executable".into());
    }
    // 64-bit (EI_CLASS 2), little-endian (EI_DATA 1), x86_64 (e_machine 62).
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) || u16_at(bytes, 0x12) != Some(62) {
        return Err("not an x86_64 executable".into());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        u64_at(bytes, 0x20),
        u16_at(bytes, 0x36),
        u16_at(bytes, 0x38),
    ) else {
        return Err("a truncated ELF header".into());
    };
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or("a truncated ELF header")?;
        match u32_at(bytes, at) {
            Some(PT_INTERP) => {
                return Err("dynamically linked (it names an ELF interpreter)".into())
            }
            Some(_) => {}
            None => return Err("a truncated ELF header".into()),
        }
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_apart() {
        // This test binary is linked the usual way: against the system's glibc.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = check_static(&exe).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(check_static(b"#!/bin/sh\n").is_err());
        assert!(check_static(&exe[..0x30]).is_err());
    }
}
