//! Opening the files nonstop writes so that a planted link cannot redirect a
//! write, and refusing directories where such a link could be planted.
//!
//! Stages often run as root (CodeDeploy hooks), in directories (`state_dir`,
//! `app.dir`, nginx's include directory) that a less trusted user may be able
//! to write. A symlink planted at a name nonstop is about to open would make
//! root truncate or append to any file on the machine. So:
//! - temp files get an unpredictable name and are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`: a name that exists (planted or not) is never
//!   opened, another name is tried;
//! - fixed names (`lock`, `history.jsonl`, the app log) are opened with
//!   `O_NOFOLLOW`, and only a regular file with one link is written to (a
//!   hard link to another file, or a FIFO that would block, is refused);
//! - rotation renames and removes entries, never opens them; a finished
//!   result is renamed into a place only if nothing is there
//!   ([`rename_new`]);
//! - every name fits the kernel's limits with the temp suffix added
//!   ([`too_long`], which config validation applies);
//! - [`check_dirs`] refuses, as ssh's StrictModes does, a directory (or a
//!   parent of it) that someone other than the running user and root can
//!   write, before anything is stopped or started.
//!
//! The state directory's records, the lock, the config's path checks, the
//! route's directory and `start`'s app log and artifact copy all use it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc;

/// How many fresh names [`create_temp`] tries before it gives up: each try
/// fails only on a name that exists, which a random name hardly ever does.
const TEMP_TRIES: u32 = 16;

/// An unpredictable 64-bit suffix. `RandomState` is seeded from the OS's
/// random source once per thread; the counter, pid and clock make each call
/// differ. Predicting it would only let someone make a create fail (O_EXCL),
/// never redirect it.
pub(crate) fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    format!("{:016x}", h.finish())
}

/// The bytes [`temp_name`] adds to a file name: `.` before it and
/// `.nonstop-` + 16 hex digits + `.tmp` after it.
pub(crate) const TEMP_EXTRA: usize = 1 + ".nonstop-".len() + 16 + ".tmp".len();

/// Linux's limit on one file name, in bytes (`NAME_MAX`).
pub(crate) const NAME_MAX: usize = 255;

/// Linux's limit on a path handed to a system call, in bytes, its
/// terminating NUL included (`PATH_MAX`): a path may have at most 4095.
pub(crate) const PATH_MAX: usize = 4096;

/// Why a file nonstop makes at `path` (`extra` bytes added to its name, as
/// [`TEMP_EXTRA`] for a temp file beside it) could not be created, if it
/// could not: a name over [`NAME_MAX`] anywhere on the path, or a path over
/// [`PATH_MAX`]. Lengths are bytes, as the kernel counts them.
pub(crate) fn too_long(path: &Path, extra: usize) -> Option<String> {
    let name = path.file_name().map_or(0, |n| n.as_encoded_bytes().len());
    if let Some(long) = path
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(|c| c.as_os_str().as_encoded_bytes().len())
        .find(|&n| n > NAME_MAX)
    {
        return Some(format!(
            "a directory name on it is {long} bytes, over the {NAME_MAX} a file name may have"
        ));
    }
    if name + extra > NAME_MAX {
        return Some(if extra == 0 {
            format!("its file name is {name} bytes, over the {NAME_MAX} a file name may have")
        } else {
            format!(
                "its file name is {name} bytes; nonstop writes it through a file beside it whose name is {extra} bytes longer, \
                 and a file name may have at most {NAME_MAX}: use a name of at most {} bytes",
                NAME_MAX - extra
            )
        });
    }
    let total = path.as_os_str().as_encoded_bytes().len() + extra;
    if total >= PATH_MAX {
        return Some(format!(
            "it is {} bytes{}, and a path may have at most {}: use a shorter one",
            total - extra,
            if extra == 0 {
                String::new()
            } else {
                format!(
                    " (with the {extra} bytes of the temp file nonstop writes beside it, {total})"
                )
            },
            PATH_MAX - 1
        ));
    }
    None
}

/// `.NAME.nonstop-RANDOM.tmp`: a leading dot and a suffix of our own keep
/// nginx's `include *.conf` globs off it. [`TEMP_EXTRA`] bytes longer than NAME.
pub(crate) fn temp_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.nonstop-{}.tmp", random_suffix()))
}

/// The error for a path that is a symlink where nonstop writes a file.
fn link_error(path: &Path) -> io::Error {
    let to = fs::read_link(path)
        .map(|t| format!(" (to {})", t.display()))
        .unwrap_or_default();
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is a symlink{to}; nonstop never writes through a link: remove it (and set the real path in the config if it was meant)",
            path.display()
        ),
    )
}

/// Turns ELOOP (O_NOFOLLOW met a symlink) into an error that says so.
fn explain(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        link_error(path)
    } else {
        e
    }
}

fn options(write: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(write);
    // O_NONBLOCK: a FIFO planted at the name must not block the open; the
    // regular-file check below then refuses it.
    o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    o
}

/// Refuses anything but a regular file with exactly one link.
fn checked(path: &Path, file: File) -> io::Result<File> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file; nonstop writes only regular files: remove it",
                path.display()
            ),
        ));
    }
    // Regular files ignore O_NONBLOCK, but the app log is handed to the app
    // as its stdout: leave it with ordinary flags.
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    if meta.nlink() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} has {} hard links; nonstop does not write to a file linked elsewhere: remove it",
                path.display(),
                meta.nlink()
            ),
        ));
    }
    Ok(file)
}

/// Creates a new temp file beside `target` (see [`temp_name`]), with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0666 less the umask, as before.
pub fn create_temp(target: &Path) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = temp_name(target);
        match options(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temp name was free")))
}

/// Creates a new directory beside `target` under a temp name (see
/// [`temp_name`]); mkdir never follows or replaces an existing entry.
pub fn create_temp_dir(target: &Path) -> io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = temp_name(target);
        match fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temp name was free")))
}

/// Renames `from` (a file or a directory) to `to` only if nothing is at
/// `to`: `AlreadyExists` otherwise, and what is there is left alone
/// (renameat2's RENAME_NOREPLACE; where the file system lacks it, an
/// exclusive hard link or mkdir takes the name first).
pub fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            if fs::symlink_metadata(from)?.is_dir() {
                // Our own empty directory at `to` is what the rename replaces.
                fs::create_dir(to)?;
                fs::rename(from, to)
            } else {
                fs::hard_link(from, to)?;
                fs::remove_file(from)
            }
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Opens a fixed name for appending, creating it if missing (`new`: it must
/// not exist, O_EXCL). Never through a symlink.
pub fn open_append(path: &Path, new: bool) -> io::Result<File> {
    let mut o = options(true);
    o.append(true);
    if new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    let file = o.open(path).map_err(|e| explain(path, e))?;
    checked(path, file)
}

/// Opens a fixed name for reading and writing, creating it if missing (the
/// lock file). Never through a symlink.
pub(crate) fn open_rw(path: &Path) -> io::Result<File> {
    let mut o = options(true);
    o.create(true);
    let file = o.open(path).map_err(|e| explain(path, e))?;
    checked(path, file)
}

/// Opens a file for reading, not through a symlink (`NotFound` when missing).
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    options(false).open(path).map_err(|e| explain(path, e))
}

/// Whether `file` is still the file at `path` (same device and inode): a
/// file deleted or replaced since it was opened is not.
pub(crate) fn is_at(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a directory takes a new entry: creates (and removes) a temp
/// entry, since root passes any permission test and only trying tells.
pub fn probe_dir(dir: &Path) -> io::Result<()> {
    let (file, tmp) = create_temp(&dir.join("write-test"))?;
    drop(file);
    fs::remove_file(&tmp)
}

/// `PATH.N`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Moves `path` to `path.1`, `path.1` to `path.2`, ... keeping `keep` old
/// copies (the oldest is removed). Only renames and removes, which act on a
/// link itself, never on what it points to; a `path` that is a symlink or not
/// a regular file is refused. Nothing to do when `path` does not exist.
/// Returns whether it rotated.
pub fn rotate(path: &Path, keep: u32) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
        Ok(m) if m.file_type().is_symlink() => return Err(link_error(path)),
        Ok(m) if !m.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file: remove it", path.display()),
            ))
        }
        Ok(_) => {}
    }
    if keep == 0 {
        return Ok(false);
    }
    match fs::remove_file(numbered(path, keep)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..keep).rev() {
        match fs::rename(numbered(path, n), numbered(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, numbered(path, 1))?;
    Ok(true)
}

/// A user's name for a message (looked up only then: NSS is not free).
/// The name of the user this process runs as (its effective uid), for the
/// commands a message suggests (`chown USER`).
pub fn current_user() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("#{uid}"))
}

fn name_of(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| format!("{} ({})", uid, u.name))
        .unwrap_or_else(|| uid.to_string())
}

/// Whether `dir` is the home directory of user `uid` (as the user database
/// says): a directory whose owner must never be changed.
fn is_home_of(dir: &Path, uid: u32) -> bool {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .is_some_and(|u| u.dir == dir)
}

/// What is wrong with one directory, if anything. `is_parent`: a sticky,
/// world-writable parent (/tmp) is fine, since nobody can replace what
/// another user made in it.
fn judge(dir: &Path, me: u32, is_parent: bool) -> Option<String> {
    let meta = fs::metadata(dir).ok()?;
    let mode = meta.mode();
    if meta.uid() != 0 && meta.uid() != me {
        // The fix is never to take the directory from its owner: run as
        // root, that would be `chown root /home/ec2-user` (breaking that
        // user's home and every hook that runs as it); the stage belongs
        // to the owner, whose hooks run with `runas:`.
        let fix = if me == 0 {
            format!(
                "run nonstop as {owner}, as its hooks do (`runas: {owner}`; by hand `sudo -u {owner} ...`), not as root",
                owner = name_of(meta.uid())
            )
        } else if is_home_of(dir, meta.uid()) {
            format!(
                "run nonstop as {owner}, whose home it is, or configure a directory only you and root can write",
                owner = name_of(meta.uid())
            )
        } else {
            format!(
                "run `chown {} {}`, run nonstop as that user, or configure a directory only you and root can write",
                name_of(me),
                dir.display()
            )
        };
        return Some(format!(
            "{} is owned by uid {}, neither you (uid {}) nor root, so that user could plant links there: {fix}",
            dir.display(),
            user_name(meta.uid()),
            me,
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(is_parent && sticky && mode & 0o002 != 0) {
        let who = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Some(format!(
            "{} is writable by {who} (mode {:04o}), who could plant links there: run `chmod go-w {}`, or configure a directory only you and root can write",
            dir.display(),
            mode & 0o7777,
            dir.display()
        ));
    }
    None
}

/// Like ssh's StrictModes: each of `dirs` (what it is, and where), and every
/// directory above it, must be writable only by the running user and root
/// (a sticky world-writable parent such as /tmp excepted). Symlinks on the
/// way are followed, and both the link's directory and its target's are
/// checked. A directory that does not exist yet is skipped (its existing
/// parents are checked). `Err` names the directory and the command that fixes it.
pub fn check_dirs(dirs: &[(&str, &Path)]) -> Result<(), String> {
    let uid = nix::unistd::geteuid().as_raw();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for (what, dir) in dirs {
        let target = fs::canonicalize(dir).ok();
        // Every prefix of the path as written, resolved: a link anywhere on
        // the way counts with both its own directory and its target's.
        let mut prefixes: Vec<&Path> = dir.ancestors().collect();
        prefixes.reverse();
        for prefix in prefixes {
            let Ok(real) = fs::canonicalize(prefix) else {
                continue;
            };
            for d in real.ancestors() {
                let is_target = target.as_deref() == Some(d);
                if !seen.insert(d.to_path_buf()) && !is_target {
                    continue;
                }
                if let Some(why) = judge(d, uid, !is_target) {
                    let whose = if is_target {
                        String::new()
                    } else {
                        format!(" (it is inside {})", d.display())
                    };
                    return Err(format!(
                        "refusing the {what} {}{whose}: {why}",
                        dir.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nonstop-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn temp_names_differ_and_never_open_an_existing_entry() {
        let dir = temp_dir("temp");
        let target = dir.join("plan.json");
        let a = temp_name(&target);
        let b = temp_name(&target);
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".plan.json.nonstop-") && name.ends_with(".tmp"));
        assert_eq!(name.len(), "plan.json".len() + TEMP_EXTRA, "{name}");
        let (mut f, tmp) = create_temp(&target).unwrap();
        f.write_all(b"x").unwrap();
        // The same name again: O_EXCL refuses it.
        assert!(options(true).create_new(true).open(&tmp).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The bound is the kernel's: a name one byte under it makes its temp
    /// file, one byte over it is what `too_long` refuses.
    #[test]
    fn too_long_is_exactly_where_the_temp_file_can_no_longer_be_made() {
        let dir = temp_dir("long");
        let fits = dir.join("f".repeat(NAME_MAX - TEMP_EXTRA));
        assert_eq!(too_long(&fits, TEMP_EXTRA), None);
        let (f, tmp) = create_temp(&fits).unwrap();
        drop(f);
        fs::remove_file(tmp).unwrap();
        let over = dir.join("f".repeat(NAME_MAX - TEMP_EXTRA + 1));
        let why = too_long(&over, TEMP_EXTRA).unwrap();
        assert!(
            why.contains(&format!("at most {} bytes", NAME_MAX - TEMP_EXTRA)),
            "{why}"
        );
        assert_eq!(
            create_temp(&over).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        // Without a temp file, the name itself may be 255.
        assert_eq!(too_long(&dir.join("f".repeat(NAME_MAX)), 0), None);
        assert!(too_long(&dir.join("f".repeat(NAME_MAX + 1)), 0).is_some());
        // A long path of short names.
        let deep: PathBuf = std::iter::once("/".to_string())
            .chain((0..=PATH_MAX / 100).map(|_| "d".repeat(99)))
            .collect();
        assert!(too_long(&deep.join("x"), 0).unwrap().contains("4095"));
        let under = Path::new("/").join("d".repeat(200)).join("x");
        assert_eq!(too_long(&under, TEMP_EXTRA), None);
        // A directory name over NAME_MAX on the way.
        let bad_dir = Path::new("/").join("d".repeat(NAME_MAX + 1)).join("x");
        assert!(too_long(&bad_dir, 0).unwrap().contains("directory name"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rename_new_never_replaces_what_is_there() {
        let dir = temp_dir("rename");
        let out = dir.join("out");
        let a = create_temp_dir(&out).unwrap();
        fs::write(a.join("f"), b"a").unwrap();
        rename_new(&a, &out).unwrap();
        let b = create_temp_dir(&out).unwrap();
        assert_eq!(
            rename_new(&b, &out).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        // Not even an empty directory is replaced.
        fs::create_dir(dir.join("empty")).unwrap();
        assert!(rename_new(&b, &dir.join("empty")).is_err());
        assert_eq!(fs::read(out.join("f")).unwrap(), b"a");
        let zip = dir.join("out.zip");
        fs::write(&zip, b"theirs").unwrap();
        fs::write(dir.join("mine"), b"mine").unwrap();
        assert!(rename_new(&dir.join("mine"), &zip).is_err());
        assert_eq!(fs::read(&zip).unwrap(), b"theirs");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fixed_names_are_never_opened_through_a_symlink_or_a_hard_link() {
        let dir = temp_dir("fixed");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let link = dir.join("history.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = open_append(&link, false).unwrap_err().to_string();
        assert!(
            err.contains("is a symlink") && err.contains("victim"),
            "{err}"
        );
        assert!(open_rw(&link).is_err());
        assert!(open_read(&link).is_err());
        fs::remove_file(&link).unwrap();
        fs::hard_link(&victim, &link).unwrap();
        let err = open_append(&link, false).unwrap_err().to_string();
        assert!(err.contains("hard links"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(&link).unwrap();
        let mut f = open_append(&link, true).unwrap();
        f.write_all(b"line\n").unwrap();
        assert!(open_append(&link, true).is_err(), "O_EXCL: it exists now");
        let mut text = String::new();
        open_read(&link).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "line\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_replaced_under_its_path_is_no_longer_at_it() {
        let dir = temp_dir("identity");
        let path = dir.join("lock");
        let file = open_rw(&path).unwrap();
        assert!(is_at(&file, &path).unwrap());
        fs::write(dir.join("other"), b"").unwrap();
        fs::rename(dir.join("other"), &path).unwrap();
        assert!(!is_at(&file, &path).unwrap());
        fs::remove_file(&path).unwrap();
        assert!(!is_at(&file, &path).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_keeps_the_last_few_and_never_follows_a_link() {
        let dir = temp_dir("rotate");
        let log = dir.join("app.log");
        assert!(!rotate(&log, 3).unwrap(), "nothing to rotate");
        for run in 1..=5 {
            fs::write(&log, format!("run {run}")).unwrap();
            assert!(rotate(&log, 3).unwrap());
        }
        assert!(!log.exists());
        assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "run 5");
        assert_eq!(fs::read_to_string(numbered(&log, 3)).unwrap(), "run 3");
        assert!(!numbered(&log, 4).exists(), "only 3 are kept");

        // keep 0: left alone (appended to, as before).
        fs::write(&log, "x").unwrap();
        assert!(!rotate(&log, 0).unwrap());
        assert!(log.exists());

        // A symlink at the log itself is refused; one among the old copies
        // is moved or removed as a link, its target untouched.
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::remove_file(&log).unwrap();
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let err = rotate(&log, 3).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        fs::remove_file(&log).unwrap();
        fs::remove_file(numbered(&log, 3)).unwrap();
        std::os::unix::fs::symlink(&victim, numbered(&log, 3)).unwrap();
        fs::write(&log, "y").unwrap();
        assert!(rotate(&log, 3).unwrap());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_with_the_fix() {
        let dir = temp_dir("strict");
        let state = dir.join("state");
        fs::create_dir_all(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        check_dirs(&[("state directory", &state)]).unwrap();

        fs::set_permissions(&state, fs::Permissions::from_mode(0o775)).unwrap();
        let err = check_dirs(&[("state directory", &state)]).unwrap_err();
        assert!(
            err.contains("state directory")
                && err.contains("group")
                && err.contains(&format!("chmod go-w {}", state.display())),
            "{err}"
        );
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();

        // A parent writable by everyone (not sticky) is refused too.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_dirs(&[("state directory", &state)]).unwrap_err();
        assert!(
            err.contains(&format!("inside {}", dir.display()))
                && err.contains(&format!("chmod go-w {}", dir.display())),
            "{err}"
        );
        // Sticky, like /tmp: fine as a parent, not as the directory itself.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        check_dirs(&[("state directory", &state)]).unwrap();
        let err = check_dirs(&[("app directory", &dir)]).unwrap_err();
        assert!(err.contains("chmod go-w"), "{err}");

        // Reached through a symlink: the target's directory is checked.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.join("via");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_dirs(&[("state directory", &link)]).unwrap_err();
        assert!(
            err.contains(&format!("chmod go-w {}", state.display())),
            "{err}"
        );

        // Owned by another user (root can chown; skip the part otherwise).
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
            let err = check_dirs(&[("state directory", &state)]).unwrap_err();
            // Run as root: the advice is to run as the owner, never to take
            // the directory from it (it may be that user's home).
            assert!(err.contains("65534"), "{err}");
            assert!(!err.contains("chown"), "{err}");
            assert!(err.contains("run nonstop as nobody"), "{err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
