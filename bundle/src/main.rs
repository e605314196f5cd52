//! `bundle` (`cargo bundle`): makes the CodeDeploy bundle of a deployment in
//! one command, a directory and its zip for `aws deploy push` or S3:
//!
//! ```text
//! appspec.yml  nonstop.json  scripts/{profile,stop,start,health,switch}
//! <the build, where app.artifact finds it after the appspec's files: copy>
//! completions/{bash,zsh,fish}/  man/man1/
//! ```
//!
//! Everything that would make the deployment fail on the server for a reason
//! known here is checked before anything is written, and named with what to
//! change: the config is valid, the appspec's hooks run the bundle's
//! binaries, their timeouts cover the waits of each stage with this config
//! (`nonstop_common::frame::budget`, the same check the stages make when they
//! start), the build lands where `app.artifact` looks, and the binaries are
//! static (they must run on whatever glibc the server has).

mod appspec;
mod elf;

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{CommandFactory, Parser};
use nonstop_common::config::{self, Backend, Config};
use nonstop_common::frame::appspec::{parse_hooks, APPSPEC};
use nonstop_common::frame::budget;
use nonstop_common::sys::files;
use nonstop_common::usage;

const STAGES: [&str; 5] = ["profile", "stop", "start", "health", "switch"];

/// Make the CodeDeploy bundle: a directory and its zip
#[derive(Debug, Parser)]
#[command(name = "bundle", version = nonstop_common::VERSION, about, long_about = None)]
struct Args {
    /// The app's build (the jar app.artifact matches); none for the compose backend
    #[arg(long, value_name = "PATH")]
    build: Option<PathBuf>,

    /// The config to ship as nonstop.json
    #[arg(long, value_name = "PATH")]
    config: PathBuf,

    /// The appspec to ship [default: the repository's appspec.yml]
    #[arg(long, value_name = "PATH")]
    appspec: Option<PathBuf>,

    /// Where the static stage binaries are [default: build them with tools/build-static]
    #[arg(long, value_name = "DIR")]
    binaries: Option<PathBuf>,

    /// The bundle directory to write; the zip is written beside it as OUT.zip. Neither may exist
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(clap_err) = err.downcast_ref::<clap::Error>() {
                let _ = clap_err.print();
            } else {
                // A gone stderr has nowhere else to go.
                let _ = writeln!(std::io::stderr(), "bundle: error: {err:#}");
            }
            ExitCode::from(nonstop_common::exit_code(&err))
        }
    }
}

/// The repository this tool was built from: where tools/build-static and
/// the default appspec.yml are.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// One file of the bundle: its path inside it, its bytes, executable or not.
struct Entry {
    path: PathBuf,
    bytes: Vec<u8>,
    exec: bool,
}

fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    let zip_path = zip_path_of(&args.out)?;
    check_free(&[&args.out, &zip_path])?;

    // The config, checked as the stages check it.
    let config_text = fs::read_to_string(&args.config)
        .map_err(|e| usage(format!("config file {}: {e}", args.config.display())))?;
    let config = config::parse(&config_text, &args.config)?;

    // The appspec: hooks that run our binaries, with timeouts that cover them.
    let appspec_path = args
        .appspec
        .clone()
        .unwrap_or_else(|| repo_root().join(APPSPEC));
    let appspec_text = fs::read_to_string(&appspec_path)
        .map_err(|e| usage(format!("appspec {}: {e}", appspec_path.display())))?;
    check_hooks(&appspec_path, &appspec_text)?;
    budget::check(&config, &appspec_path, &appspec_text).map_err(usage)?;

    // The build, where app.artifact will find it.
    let copies = appspec::parse_files(&appspec_text)
        .map_err(|e| usage(format!("appspec {}: {e}", appspec_path.display())))?;
    let build = place_build(&config, &appspec_path, &copies, args.build.as_deref())?;

    // The binaries, static.
    let binaries = match &args.binaries {
        Some(dir) => dir.clone(),
        None => build_static()?,
    };
    let mut entries = stage_entries(&binaries)?;
    check_zip()?;

    entries.push(Entry {
        path: PathBuf::from(APPSPEC),
        bytes: appspec_text.into_bytes(),
        exec: false,
    });
    entries.push(Entry {
        path: PathBuf::from(config::FILE_NAME),
        bytes: config_text.into_bytes(),
        exec: false,
    });
    if let Some((inside, source)) = &build {
        let bytes =
            fs::read(source).with_context(|| format!("reading the build {}", source.display()))?;
        entries.push(Entry {
            path: inside.clone(),
            bytes,
            exec: false,
        });
    }
    entries.extend(docs()?);
    if let Some((inside, _)) = &build {
        check_build_alone(&entries, inside)?;
    }

    // Nothing was written so far; `write` removes what it made if it fails.
    write(&args.out, &zip_path, &entries)?;
    tell(&args.out, &zip_path, &entries);
    Ok(())
}

/// Refuses to overwrite: `--out` and its zip must not exist yet (not even
/// as a dangling symlink).
fn check_free(paths: &[&Path]) -> Result<()> {
    for path in paths {
        if fs::symlink_metadata(path).is_ok() {
            return Err(usage(format!(
                "{} already exists: remove it or choose another --out",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The stage binaries in `binaries`, read and checked to be static, as the
/// bundle's `scripts/`.
fn stage_entries(binaries: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for stage in STAGES {
        let path = binaries.join(stage);
        let bytes = fs::read(&path).map_err(|e| {
            usage(format!(
                "stage binary {}: {e} (build them with tools/build-static, or pass --binaries DIR)",
                path.display()
            ))
        })?;
        if let Err(why) = elf::check_static(&bytes) {
            return Err(usage(format!(
                "{}: {why}: it would need the build machine's glibc on the server; build the stages with tools/build-static",
                path.display()
            )));
        }
        entries.push(Entry {
            path: Path::new("scripts").join(stage),
            bytes,
            exec: true,
        });
    }
    Ok(entries)
}

/// The `zip` command runs (it packs the bundle).
fn check_zip() -> Result<()> {
    if Command::new("zip")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return Err(usage(
            "the `zip` command does not run: install it (Debian: apt-get install zip)",
        ));
    }
    Ok(())
}

/// The build's place in the bundle (`inside`) is not also a file nonstop
/// ships.
fn check_build_alone(entries: &[Entry], inside: &Path) -> Result<()> {
    let taken: Vec<&Path> = entries.iter().map(|e| e.path.as_path()).collect();
    if taken.iter().filter(|p| **p == inside).count() > 1 {
        return Err(usage(format!(
            "the build would land on {} in the bundle, a file nonstop ships: change app.artifact's directory",
            inside.display()
        )));
    }
    Ok(())
}

/// What was written, and what to do next, on stdout.
fn tell(out_dir: &Path, zip_path: &Path, entries: &[Entry]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "bundle: wrote {}/ and {}",
        out_dir.display(),
        zip_path.display()
    );
    for e in entries {
        let _ = writeln!(out, "  {}", e.path.display());
    }
    let _ = writeln!(
        out,
        "next: aws s3 cp {} s3://BUCKET/KEY.zip, then aws deploy create-deployment --s3-location bucket=BUCKET,key=KEY.zip,bundleType=zip (README: From push to production)",
        zip_path.display()
    );
}

/// `OUT.zip` beside `OUT`.
fn zip_path_of(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| usage(format!("--out {}: names no directory", out.display())))?;
    let mut zip = name.to_os_string();
    zip.push(".zip");
    Ok(out.with_file_name(zip))
}

/// Every hook of the appspec that is one of the stages must run it from
/// `scripts/`, where the bundle puts it; any other script is not shipped.
fn check_hooks(path: &Path, text: &str) -> Result<()> {
    let hooks = parse_hooks(text).map_err(|e| usage(format!("appspec {}: {e}", path.display())))?;
    if hooks.is_empty() {
        return Err(usage(format!(
            "appspec {}: no hooks: CodeDeploy would run nothing; the repository's appspec.yml has the three nonstop hooks",
            path.display()
        )));
    }
    let mut problems = Vec::new();
    for hook in &hooks {
        let file = hook.location.split_whitespace().next().unwrap_or("");
        let ours = STAGES
            .iter()
            .any(|s| file.trim_start_matches("./") == format!("scripts/{s}"));
        if !ours {
            problems.push(format!(
                "line {}: hook {} runs {:?}, which the bundle does not hold (it ships scripts/{{{}}})",
                hook.line,
                hook.event,
                hook.location,
                STAGES.join(",")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(usage(format!(
            "appspec {}: {}",
            path.display(),
            problems.join("; ")
        )))
    }
}

/// Where the build goes in the bundle: the place the appspec's `files:`
/// copy brings to `app.artifact`'s directory, under the build's own name,
/// which must match the artifact pattern. `None` for the compose backend
/// (the image is the build).
fn place_build(
    config: &Config,
    appspec_path: &Path,
    copies: &[appspec::Copy],
    build: Option<&Path>,
) -> Result<Option<(PathBuf, PathBuf)>> {
    if let Backend::Compose(_) = config.app.backend {
        if let Some(b) = build {
            return Err(usage(format!(
                "--build {}: the compose backend deploys the image app.compose names, not a file; leave --build out",
                b.display()
            )));
        }
        return Ok(None);
    }
    let Some(build) = build else {
        return Err(usage(format!(
            "--build PATH is missing: {} starts the file app.artifact ({}) matches; pass the jar",
            config.source.display(),
            config
                .app
                .artifact_dir
                .join(&config.app.artifact_pattern)
                .display()
        )));
    };
    let meta =
        fs::metadata(build).map_err(|e| usage(format!("--build {}: {e}", build.display())))?;
    if !meta.is_file() {
        return Err(usage(format!("--build {}: not a file", build.display())));
    }
    let name = build
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage(format!("--build {}: names no file", build.display())))?;
    let pattern = &config.app.artifact_pattern;
    if !config::wildcard_match(pattern, name) {
        return Err(usage(format!(
            "--build {}: its name {name:?} does not match app.artifact's pattern {pattern:?} in {}: start would not find it; rename the build or change app.artifact",
            build.display(),
            config.source.display()
        )));
    }
    let artifact_dir = &config.app.artifact_dir;
    if copies.is_empty() {
        return Err(usage(format!(
            "appspec {}: no `files:` section: CodeDeploy would copy nothing to the server, and start would find no build in {}. Add:\nfiles:\n  - source: /\n    destination: {}/",
            appspec_path.display(),
            artifact_dir.display(),
            artifact_dir.display()
        )));
    }
    let Some((inside, _)) = appspec::place_for(copies, artifact_dir) else {
        let dests: Vec<String> = copies
            .iter()
            .map(|c| format!("{} (line {})", c.destination, c.line))
            .collect();
        let first = copies[0].destination_path();
        let suggestion = match first.strip_prefix(&config.app.dir) {
            Ok(rel) if rel.as_os_str().is_empty() => pattern.to_string(),
            Ok(rel) => format!("{}/{pattern}", rel.display()),
            Err(_) => format!("{}/{pattern}", first.display()),
        };
        return Err(usage(format!(
            "app.artifact in {} looks for the build in {}, but appspec {} copies the bundle to {}: start would find no build there. Set \"artifact\": {suggestion:?} in app, or the appspec's destination to {}/",
            config.source.display(),
            artifact_dir.display(),
            appspec_path.display(),
            dests.join(", "),
            artifact_dir.display()
        )));
    };
    Ok(Some((inside.join(name), build.to_path_buf())))
}

/// Runs tools/build-static; its last line of stdout is the binaries' directory.
fn build_static() -> Result<PathBuf> {
    let script = repo_root().join("tools/build-static");
    if !script.is_file() {
        return Err(usage(format!(
            "{} is not there (this tool was moved away from its repository): pass --binaries DIR",
            script.display()
        )));
    }
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("{} printed no directory", script.display()))?;
    Ok(PathBuf::from(dir))
}

/// Shell completions and man pages of the five stages, from their clap
/// definitions.
fn docs() -> Result<Vec<Entry>> {
    use clap_complete::Shell;
    let commands = [
        nonstop_profile::Args::command(),
        nonstop_stop::Args::command(),
        nonstop_start::Args::command(),
        nonstop_health::Args::command(),
        nonstop_switch::Args::command(),
    ];
    let mut entries = Vec::new();
    for (stage, command) in STAGES.iter().zip(commands) {
        for (shell, file) in [
            (Shell::Bash, format!("bash/{stage}")),
            (Shell::Zsh, format!("zsh/_{stage}")),
            (Shell::Fish, format!("fish/{stage}.fish")),
        ] {
            let mut bytes = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), *stage, &mut bytes);
            entries.push(Entry {
                path: Path::new("completions").join(file),
                bytes,
                exec: false,
            });
        }
        let mut bytes = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut bytes)
            .with_context(|| format!("rendering the man page of {stage}"))?;
        entries.push(Entry {
            path: Path::new("man/man1").join(format!("{stage}.1")),
            bytes,
            exec: false,
        });
    }
    Ok(entries)
}

/// Writes the bundle directory and its zip, whole or not at all: both are
/// made in a temp directory beside `out` and renamed into place only if
/// nothing is there (another run's output is never replaced, nor removed).
/// A failure removes the temp directory, and the directory already renamed
/// into place when the zip's place was taken meanwhile: only what this run
/// made.
fn write(out: &Path, zip_path: &Path, entries: &[Entry]) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let staging = files::create_temp_dir(out)
        .with_context(|| format!("creating a temp directory beside {}", out.display()))?;
    let made = staging.join("bundle");
    let zip = staging.join("bundle.zip");
    let result = fill(&made, &zip, entries).and_then(|()| {
        place(&made, out)?;
        place(&zip, zip_path).inspect_err(|_| {
            // Ours, renamed into place a moment ago: back out with it.
            let _ = fs::rename(out, &made);
        })
    });
    let _ = fs::remove_dir_all(&staging);
    result
}

/// Renames what this run made to where it goes, unless something is there.
fn place(from: &Path, to: &Path) -> Result<()> {
    files::rename_new(from, to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            usage(format!(
                "{} was made meanwhile (another bundle run with the same --out?): left as it is, and this run's bundle removed; \
                 remove it or choose another --out",
                to.display()
            ))
        } else {
            anyhow!("cannot move the bundle to {}: {e}", to.display())
        }
    })
}

/// The bundle's files in `dir` (made here), and their zip at `zip_path`.
fn fill(dir: &Path, zip_path: &Path, entries: &[Entry]) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in entries {
        // Only plain names inside the bundle: nothing may land outside it.
        if !entry
            .path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            bail!("{} is not a path inside the bundle", entry.path.display());
        }
        let path = dir.join(&entry.path);
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // create_new: O_CREAT|O_EXCL, which never follows a planted symlink.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if entry.exec { 0o755 } else { 0o644 })
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&entry.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let zip_abs = std::path::absolute(zip_path)
        .with_context(|| format!("the absolute path of {}", zip_path.display()))?;
    // -X: no extra attributes (uid, times) beyond the Unix modes, which the
    // executables need.
    let status = Command::new("zip")
        .args(["-q", "-r", "-X"])
        .arg(&zip_abs)
        .arg(".")
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .context("running zip")?;
    if !status.success() {
        bail!("zip -r {} failed ({status})", zip_abs.display());
    }
    Ok(())
}
