//! Cgroup attribution against real containers: busybox containers run by crun in cgroups named
//! the way kubelet names them under each cgroup driver, found back from their pid and from
//! their cgroup id (the directory's inode), and the id the eBPF tracer stamps on a container's
//! write is that same inode.
//!
//! The containers (`phase_4_k8s::testbed::crun`): crun's cgroupfs manager creates whatever `cgroupsPath` it
//! is given, so systemd-driver names are made without systemd. On a hybrid host (v1 controllers,
//! the unified hierarchy at `/sys/fs/cgroup/unified`) crun refuses to run while the unified
//! hierarchy has a controller (hugetlb here); each crun call then runs in a private mount
//! namespace where `/sys/fs/cgroup` is the cgroup2 mount, so crun sees a v2 host and puts the
//! container in the unified hierarchy, which is what eBPF cgroup ids name.

use phase_2_straddle::event::Phase2Event;
use phase_2_straddle::tracer::Tracer;
use phase_4_k8s::cgroup::{cgroup_of_pid, container_of, CgroupPaths, ContainerRef, Runtime};
use phase_4_k8s::testbed::crun::{exclusive, host, random_ids, Container};
use shared::{FingerprintConfig, Scanner};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Runs one sleeping container per (cgroups path, expected container) at once and finds each
/// back from its pid and from its cgroup id.
fn attribute(cases: &[(String, ContainerRef)]) {
    let _lock = exclusive().unwrap();
    let host = host().unwrap();
    let containers: Vec<Container> = cases
        .iter()
        .map(|(path, _)| Container::new(&host, path, &["sleep", "600"], &[]).unwrap())
        .collect();
    for c in &containers {
        c.run().unwrap();
    }
    let mut paths = CgroupPaths::new(&host.root);
    for (c, (path, want)) in containers.iter().zip(cases) {
        let pid = c.pid().unwrap();
        let rel = PathBuf::from(&c.cgroup);
        assert_eq!(cgroup_of_pid(pid), Some(rel.clone()), "pid {pid} of {path}");
        let line = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let ino = fs::metadata(c.cgroup_dir()).unwrap().ino();
        assert_eq!(
            paths.path_of(ino),
            Some(rel.clone()),
            "cgroup id {ino} of {path}"
        );
        assert_eq!(
            container_of(rel.to_str().unwrap()).as_ref(),
            Some(want),
            "{path}"
        );
        assert_eq!(container_of(path).as_ref(), Some(want), "{path}");
        assert_eq!(paths.container_of_id(ino).as_ref(), Some(want), "{path}");
        let v2 = line.lines().find(|l| l.starts_with("0::")).unwrap();
        assert_eq!(container_of(v2).as_ref(), Some(want), "{v2}");
        eprintln!("pid {pid}, cgroup id {ino}: {path} -> {want:?}");
    }
    // This test's own process is in no container.
    let own = cgroup_of_pid(std::process::id()).expect("this process has a cgroup");
    assert_eq!(container_of(own.to_str().unwrap()), None, "{own:?}");
}

fn containerd_ref(runtime: Runtime, id: &str, uid: &str) -> ContainerRef {
    ContainerRef {
        runtime,
        id: id.to_string(),
        pod_uid: Some(uid.to_string()),
    }
}

#[test]
fn systemd_driver_paths() {
    let (id1, uid1) = random_ids();
    let (id2, uid2) = random_ids();
    let (u1, u2) = (uid1.replace('-', "_"), uid2.replace('-', "_"));
    attribute(&[
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u1}.slice/\
                 cri-containerd-{id1}.scope"
            ),
            containerd_ref(Runtime::Containerd, &id1, &uid1),
        ),
        // Guaranteed QoS: the pod slice directly under kubepods.slice.
        (
            format!("/kubepods.slice/kubepods-pod{u2}.slice/crio-{id2}.scope"),
            containerd_ref(Runtime::CriO, &id2, &uid2),
        ),
    ]);
}

#[test]
fn cgroupfs_driver_paths() {
    let (id1, uid1) = random_ids();
    let (id2, uid2) = random_ids();
    attribute(&[
        (
            format!("/kubepods/besteffort/pod{uid1}/{id1}"),
            containerd_ref(Runtime::Containerd, &id1, &uid1),
        ),
        (
            format!("/kubepods/pod{uid2}/{id2}"),
            containerd_ref(Runtime::Containerd, &id2, &uid2),
        ),
    ]);
}

/// The tracer's `cgroup_id` on a container's writes is its cgroup directory's inode: a
/// container's `dd` writes speech-like PCM to its stdout, a pipe this test reads.
#[test]
fn ebpf_cgroup_id_is_the_cgroup_directory_inode() {
    let _lock = exclusive().unwrap();
    let host = host().unwrap();
    let (id, uid) = random_ids();
    let path = format!("/kubepods/burstable/pod{uid}/{id}");
    let audio = harness::audio::speech_like(8000, 10.0, 5).to_bytes();
    let c = Container::new(
        &host,
        &path,
        &["dd", "if=/audio.raw", "bs=4096"],
        &[("audio.raw", &audio)],
    )
    .unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    c.create(writer).unwrap();
    // crun create leaves the container's init waiting in its cgroup, under its final pid.
    let pid = c.pid().unwrap();
    let ino = fs::metadata(c.cgroup_dir()).unwrap().ino();
    let cfg = FingerprintConfig::default();
    let mut tracer = Tracer::start(&cfg, None).expect("loading phase 2 (run as root)");
    tracer.add_targets(&[pid]).unwrap();
    c.start().unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert!(
        got == audio,
        "the container wrote {} of {} bytes",
        got.len(),
        audio.len()
    );
    let mut events: Vec<Phase2Event> = Vec::new();
    tracer.drain(|e| events.push(e));
    let mine: Vec<&Phase2Event> = events
        .iter()
        .filter(|e| e.call.tgid == pid && e.call.fd == 1)
        .collect();
    let mut seen: Vec<(u64, u64)> = mine.iter().map(|e| (e.end, e.signature)).collect();
    seen.sort_unstable();
    let want: Vec<(u64, u64)> = Scanner::new(cfg)
        .feed_collect(&audio)
        .iter()
        .map(|m| (m.end, m.signature))
        .collect();
    assert!(want.len() > 10, "{} reference moments", want.len());
    assert_eq!(seen, want, "the container's moments");
    let ids: std::collections::BTreeSet<u64> = mine.iter().map(|e| e.call.cgroup_id).collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![ino],
        "cgroup ids on the container's writes"
    );
    let mut paths = CgroupPaths::new(&host.root);
    assert_eq!(
        paths.path_of(ino),
        Some(PathBuf::from(path.trim_start_matches('/')))
    );
    assert_eq!(
        paths.container_of_id(mine[0].call.cgroup_id),
        Some(containerd_ref(Runtime::Containerd, &id, &uid))
    );
    eprintln!(
        "{} moments from pid {pid} ({}), cgroup id {ino}: {path}",
        mine.len(),
        mine[0].comm()
    );
}
