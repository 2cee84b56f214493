// SPDX-License-Identifier: GPL-2.0
// Enhanced session recording: the commands (execve), files (openat) and TCP connections
// (connect) of the node's sessions, attributed by process tree.
//
// A session's first process, a direct child of the node, registers itself before it execs
// with lseek(-1, cookie, MARK_WHENCE) (a call that only fails with EBADF); only a direct child
// of the node can register, and each cookie once. From then on every task it forks inherits
// the cookie (sched_process_fork), so attribution needs no cgroup and works on cgroup v1 and
// v2 hosts alike. Events go to three ring buffers sized by the node's configuration; an event
// that does not fit is counted in the session's `lost` entry, never waited for.
//
// Built with: clang -O2 -g -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 against vmlinux.h
// (bpftool btf dump file /sys/kernel/btf/vmlinux format c); see teleport_runtime/node/bpf.py.

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define PATH_LEN 256
#define ARGV_SLOTS 16
#define ARG_LEN 64
#define MARK_WHENCE 0x54504c52
#define AF_INET 2
#define AF_INET6 10

#define F_COMMAND 1
#define F_DISK 2
#define F_NETWORK 4

enum { L_COMMAND = 0, L_DISK = 1, L_NETWORK = 2 };

char LICENSE[] SEC("license") = "GPL";

struct tp_config {
	__u32 node_tgid;
};

struct tp_session {
	__u32 flags;
	__u32 claimed;
};

struct tp_tracked {
	__u64 cookie;
	__u32 flags;
	__u32 pad;
};

struct tp_lost {
	__u64 counts[3];
};

struct tp_command_event {
	__u64 cookie;
	__u32 pid;
	__u32 ppid;
	__s32 retval;
	__u32 argc;
	__u32 uid;
	__u32 pad;
	char comm[16];
	char path[PATH_LEN];
	char argv[ARGV_SLOTS][ARG_LEN];
};

struct tp_disk_event {
	__u64 cookie;
	__u32 pid;
	__s32 retval;
	__s32 flags;
	__u32 pad;
	char comm[16];
	char path[PATH_LEN];
};

struct tp_network_event {
	__u64 cookie;
	__u32 pid;
	__s32 retval;
	__u16 version;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
	__u64 sk; // the socket, for the source port the kernel picks after SYN_SENT
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tp_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct tp_session);
} sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct tp_lost);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct tp_tracked);
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct tp_command_event);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct tp_disk_event);
} opens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct tp_network_event);
} connects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tp_command_event);
} command_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tp_disk_event);
} disk_scratch SEC(".maps");

// Sizes set by the loader (bpf_map__set_max_entries) from the node's configuration.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 4096);
} command_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 128 * 4096);
} disk_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 4096);
} network_events SEC(".maps");

static __always_inline __u32 current_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

static __always_inline __u32 current_tgid(void)
{
	return (__u32)(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline __u32 current_ppid(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, real_parent, tgid);
}

static __always_inline void count_lost(__u64 cookie, int kind)
{
	struct tp_lost *entry = bpf_map_lookup_elem(&lost, &cookie);
	if (entry && kind >= 0 && kind < 3)
		__sync_fetch_and_add(&entry->counts[kind], 1);
}

static __always_inline struct tp_tracked *current_session(__u32 flag)
{
	__u32 tid = current_tid();
	struct tp_tracked *t = bpf_map_lookup_elem(&tracked, &tid);
	if (!t || !(t->flags & flag))
		return 0;
	return t;
}

SEC("tracepoint/syscalls/sys_enter_lseek")
int register_session(struct trace_event_raw_sys_enter *ctx)
{
	if ((int)ctx->args[0] != -1 || (__u32)ctx->args[2] != MARK_WHENCE)
		return 0;
	__u32 zero = 0;
	struct tp_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || current_ppid() != cfg->node_tgid)
		return 0;
	__u32 tid = current_tid();
	if (bpf_map_lookup_elem(&tracked, &tid))
		return 0; // already in a session: it cannot move to another one
	__u64 cookie = ctx->args[1];
	struct tp_session *s = bpf_map_lookup_elem(&sessions, &cookie);
	if (!s || __sync_val_compare_and_swap(&s->claimed, 0, 1) != 0)
		return 0;
	struct tp_tracked t = {.cookie = cookie, .flags = s->flags};
	bpf_map_update_elem(&tracked, &tid, &t, BPF_NOEXIST);
	return 0;
}

SEC("tracepoint/sched/sched_process_fork")
int on_fork(struct trace_event_raw_sched_process_fork *ctx)
{
	__u32 parent = ctx->parent_pid;
	struct tp_tracked *t = bpf_map_lookup_elem(&tracked, &parent);
	if (!t)
		return 0;
	struct tp_tracked child = *t;
	__u32 pid = ctx->child_pid;
	if (bpf_map_update_elem(&tracked, &pid, &child, BPF_ANY) != 0) {
		// the table is full: this subtree goes unrecorded, which the session's audit says
		count_lost(child.cookie, L_COMMAND);
	}
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int on_exit(void *ctx)
{
	__u32 tid = current_tid();
	bpf_map_delete_elem(&tracked, &tid);
	bpf_map_delete_elem(&execs, &tid);
	bpf_map_delete_elem(&opens, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	struct tp_tracked *t = current_session(F_COMMAND);
	if (!t)
		return 0;
	__u32 zero = 0;
	struct tp_command_event *ev = bpf_map_lookup_elem(&command_scratch, &zero);
	if (!ev)
		return 0;
	ev->cookie = t->cookie;
	ev->argc = 0;
	bpf_probe_read_user_str(ev->path, sizeof(ev->path), (const char *)ctx->args[0]);
	const char *const *argv = (const char *const *)ctx->args[1];
#pragma unroll
	for (int i = 0; i < ARGV_SLOTS; i++) {
		const char *arg = 0;
		ev->argv[i][0] = 0;
		if (ev->argc < (__u32)i)
			continue;
		if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) != 0 || !arg)
			continue;
		if (bpf_probe_read_user_str(ev->argv[i], ARG_LEN, arg) > 0)
			ev->argc = i + 1;
	}
	__u32 tid = current_tid();
	if (bpf_map_update_elem(&execs, &tid, ev, BPF_ANY) != 0)
		count_lost(t->cookie, L_COMMAND);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exit_execve(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = current_tid();
	struct tp_command_event *ev = bpf_map_lookup_elem(&execs, &tid);
	if (!ev)
		return 0;
	ev->retval = (__s32)ctx->ret;
	ev->pid = current_tgid();
	ev->ppid = current_ppid();
	ev->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	// only the arguments there are: a short command takes a quarter of the full record
	__u64 size = __builtin_offsetof(struct tp_command_event, argv) + (__u64)ev->argc * ARG_LEN;
	if (size > sizeof(*ev))
		size = sizeof(*ev);
	if (bpf_ringbuf_output(&command_events, ev, size, 0) != 0)
		count_lost(ev->cookie, L_COMMAND);
	bpf_map_delete_elem(&execs, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	struct tp_tracked *t = current_session(F_DISK);
	if (!t)
		return 0;
	__u32 zero = 0;
	struct tp_disk_event *ev = bpf_map_lookup_elem(&disk_scratch, &zero);
	if (!ev)
		return 0;
	ev->cookie = t->cookie;
	ev->flags = (__s32)ctx->args[2];
	bpf_probe_read_user_str(ev->path, sizeof(ev->path), (const char *)ctx->args[1]);
	__u32 tid = current_tid();
	if (bpf_map_update_elem(&opens, &tid, ev, BPF_ANY) != 0)
		count_lost(t->cookie, L_DISK);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = current_tid();
	struct tp_disk_event *ev = bpf_map_lookup_elem(&opens, &tid);
	if (!ev)
		return 0;
	ev->retval = (__s32)ctx->ret;
	ev->pid = current_tgid();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (bpf_ringbuf_output(&disk_events, ev, sizeof(*ev), 0) != 0)
		count_lost(ev->cookie, L_DISK);
	bpf_map_delete_elem(&opens, &tid);
	return 0;
}

// TCP connects: sock:inet_sock_set_state (CLOSE -> SYN_SENT, in the connecting process) gives
// the addresses, sys_exit_connect the result. Both are stable tracepoints: kernels built
// without kprobes or BPF trampolines (such as this one) have them.
SEC("tracepoint/sock/inet_sock_set_state")
int on_sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->newstate != 2 /* TCP_SYN_SENT */ || ctx->protocol != 6 /* IPPROTO_TCP */)
		return 0;
	struct tp_tracked *t = current_session(F_NETWORK);
	if (!t)
		return 0;
	struct tp_network_event ev = {};
	ev.cookie = t->cookie;
	ev.pid = current_tgid();
	ev.sport = ctx->sport;
	ev.dport = ctx->dport;
	ev.sk = (__u64)ctx->skaddr;
	if (ctx->family == AF_INET) {
		ev.version = 4;
		bpf_probe_read_kernel(ev.saddr, 4, ctx->saddr);
		bpf_probe_read_kernel(ev.daddr, 4, ctx->daddr);
	} else {
		ev.version = 6;
		bpf_probe_read_kernel(ev.saddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(ev.daddr, 16, ctx->daddr_v6);
	}
	bpf_get_current_comm(ev.comm, sizeof(ev.comm));
	__u32 tid = current_tid();
	if (bpf_map_update_elem(&connects, &tid, &ev, BPF_ANY) != 0)
		count_lost(ev.cookie, L_NETWORK);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = current_tid();
	struct tp_network_event *ev = bpf_map_lookup_elem(&connects, &tid);
	if (!ev)
		return 0;
	ev->retval = (__s32)ctx->ret;
	if (!ev->sport) {
		struct sock *sk = (struct sock *)ev->sk;
		ev->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	if (bpf_ringbuf_output(&network_events, ev, sizeof(*ev), 0) != 0)
		count_lost(ev->cookie, L_NETWORK);
	bpf_map_delete_elem(&connects, &tid);
	return 0;
}
