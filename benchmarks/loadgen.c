/*
 * loadgen.c - the benchmarks' WebSocket load generator, and a reference chat server in C.
 *
 * Built at run time by benchlib.py (gcc -O2); no binary is committed.
 *
 *   loadgen client --host H --port P --conns FILE [--sources K] [--server-pid PID]
 *                  [--concurrency C] [--connect-timeout S]
 *       FILE has one line per socket: "R PATH COOKIE" (a receiver) or "S PATH COOKIE" (the sender).
 *       Every socket is connected (at most C handshakes in flight; 0 = all at once), and the
 *       time until each has its welcome frame is reported. Then commands are read from stdin:
 *         step RATE DURATION DRAIN SIZE   the sender says RATE messages/s for DURATION s, each a
 *                                         SIZE-character text ending "#<seq>@<due time, us>";
 *                                         receivers time every copy from when it was due (not
 *                                         when it was sent) and count a copy seen before, or out
 *                                         of order, as a duplicate, never as received; waits up
 *                                         to DRAIN s for all.
 *         stats                            prints the open/closed socket counts.
 *         quit                             closes everything and exits.
 *       Every answer is one JSON line on stdout.
 *
 *   loadgen serve --port P
 *       A minimal chat server: one room, every "say" is encoded once and the frames pending after
 *       one pass of the event loop go to each subscriber in one write(). It is the generator's
 *       headroom check: the fastest server the generator can be pointed at.
 *
 * One thread, epoll, non-blocking sockets. Receivers parse every frame header and, for message
 * frames, the sequence number and send time at fixed offsets from the end of the frame:
 * the message's text is the last JSON field, so a frame ends with  #SSSSSSSSSS@TTTTTTTTTTTTTTTT"}
 * Send and receipt times are CLOCK_MONOTONIC microseconds, read in this same process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int server_pid = 0;

static double cpu_of(int pid) {
    if (pid <= 0) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return 0;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* ------------------------------------------------------------------------------------------ */
/* client                                                                                      */

enum { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_WAIT_WELCOME, C_OPEN, C_CLOSED };

typedef struct {
    int fd;
    int state;
    int sender;
    int close_code;
    int fail;            /* errno, or -HTTP status */
    char *path, *cookie;
    unsigned char *left; /* an incomplete frame (or response head) carried to the next read */
    int left_len, left_cap;
    unsigned char *out;  /* bytes not yet accepted by the kernel */
    int out_len, out_cap;
    int want_out;
    int64_t t_start, t_welcome;
    int64_t last_seq;
} conn_t;

static conn_t *conns;
static int nconns, nsent_conn = -1;
static int ep;
static unsigned char *rbuf;
static size_t rcap = 4 << 20;

/* per-step counters */
#define HBITS 22
#define HSIZE (1u << HBITS) /* 1 us bins up to 4.19 s */
static uint32_t *hist;
static uint64_t h_over, h_count;
static int64_t h_max;
static int64_t step_first = -1, step_last = -2; /* seq range of the running step */
static uint64_t received, stale, dupes, reads, frames_read, bytes_read;
static int64_t last_receipt;
static int closed_total, closed_1013;

static void conn_add_left(conn_t *c, const unsigned char *p, int n) {
    if (c->left_cap < n) {
        c->left_cap = n < 512 ? 512 : n;
        c->left = realloc(c->left, c->left_cap);
    }
    memcpy(c->left, p, n);
    c->left_len = n;
}

static void conn_close(conn_t *c, int code) {
    if (c->state == C_CLOSED) return;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = C_CLOSED;
    c->close_code = code;
    closed_total++;
    if (code == 1013) closed_1013++;
    free(c->left);
    c->left = NULL;
    c->left_len = c->left_cap = 0;
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_cap = 0;
}

static void set_events(conn_t *c, int want_out) {
    if (c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns) + 1};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void conn_flush(conn_t *c) {
    while (c->out_len > 0) {
        ssize_t n = write(c->fd, c->out, c->out_len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            conn_close(c, -errno);
            return;
        }
        memmove(c->out, c->out + n, c->out_len - n);
        c->out_len -= n;
    }
    set_events(c, c->out_len > 0);
}

static void conn_send(conn_t *c, const void *data, int len) {
    if (c->state == C_CLOSED) return;
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    conn_flush(c);
}

/* a client frame: masked with the all-zero key, so the payload goes as it is */
static int client_frame(unsigned char *dst, int opcode, const unsigned char *payload, int len) {
    int h = 0;
    dst[h++] = 0x80 | opcode;
    if (len < 126) {
        dst[h++] = 0x80 | len;
    } else {
        dst[h++] = 0x80 | 126;
        dst[h++] = len >> 8;
        dst[h++] = len & 0xff;
    }
    memset(dst + h, 0, 4);
    h += 4;
    memcpy(dst + h, payload, len);
    return h + len;
}

static inline int64_t digits(const unsigned char *p, int n) {
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        unsigned d = p[i] - '0';
        if (d > 9) return -1;
        v = v * 10 + d;
    }
    return v;
}

static void on_text(conn_t *c, const unsigned char *p, uint64_t len, int64_t now) {
    if (c->state == C_WAIT_WELCOME) {
        if (len >= 17 && memcmp(p, "{\"type\":\"welcome\"", 17) == 0) {
            c->state = C_OPEN;
            c->t_welcome = now;
        }
        return;
    }
    if (len < 32 || p[len - 1] != '}' || p[len - 2] != '"' || p[len - 19] != '@' || p[len - 30] != '#')
        return; /* join, leave, typing, error */
    if (c->sender) return;
    int64_t seq = digits(p + len - 29, 10);
    int64_t ts = digits(p + len - 18, 16);
    if (seq < 0 || ts < 0) return;
    if (seq <= c->last_seq) {
        /* a copy again, or out of order: never counted as received, so it cannot hide a loss */
        dupes++;
        return;
    }
    c->last_seq = seq;
    if (seq < step_first || seq > step_last) {
        stale++;
        return;
    }
    received++;
    last_receipt = now;
    int64_t lat = now - ts;
    if (lat < 0) lat = 0;
    if (lat > h_max) h_max = lat;
    if (lat >= (int64_t)HSIZE)
        h_over++;
    else
        hist[lat]++;
    h_count++;
}

/* parse the frames in buf[0..n); returns the bytes consumed */
static size_t parse_frames(conn_t *c, unsigned char *buf, size_t n, int64_t now) {
    size_t off = 0;
    while (n - off >= 2) {
        unsigned char *p = buf + off;
        int opcode = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | p[2 + i];
            h = 10;
        }
        if (p[1] & 0x80) h += 4; /* servers do not mask; tolerate it anyway (payload unread) */
        if (n - off < h + len) break;
        unsigned char *payload = p + h;
        frames_read++;
        if (opcode == 1 || opcode == 0) {
            on_text(c, payload, len, now);
        } else if (opcode == 8) {
            int code = len >= 2 ? (payload[0] << 8) | payload[1] : 1005;
            conn_close(c, code);
            return n;
        } else if (opcode == 9) {
            unsigned char f[140];
            int flen = client_frame(f, 0xA, payload, len < 125 ? (int)len : 125);
            conn_send(c, f, flen);
            if (c->state == C_CLOSED) return n;
        }
        off += h + len;
    }
    return off;
}

static void conn_read(conn_t *c, int64_t now) {
    for (;;) {
        size_t have = c->left_len;
        if (have + 65536 > rcap) {
            rcap = (have + 65536) * 2;
            rbuf = realloc(rbuf, rcap);
        }
        if (have) memcpy(rbuf, c->left, have);
        ssize_t n = read(c->fd, rbuf + have, rcap - have);
        if (n == 0) {
            conn_close(c, c->state == C_HANDSHAKE ? -1 : 1006);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            if (c->state < C_WAIT_WELCOME && !c->fail) c->fail = errno;
            conn_close(c, -errno);
            return;
        }
        now = mono_us(); /* the receipt time of everything this read returned */
        reads++;
        bytes_read += n;
        size_t total = have + n;
        size_t off = 0;
        if (c->state == C_HANDSHAKE) {
            unsigned char *end = memmem(rbuf, total, "\r\n\r\n", 4);
            if (!end) {
                conn_add_left(c, rbuf, total);
                continue;
            }
            int status = 0;
            sscanf((char *)rbuf, "HTTP/1.1 %d", &status);
            if (status != 101) {
                c->fail = -status;
                conn_close(c, -status);
                return;
            }
            c->state = C_WAIT_WELCOME;
            off = end + 4 - rbuf;
        }
        off += parse_frames(c, rbuf + off, total - off, now);
        if (c->state == C_CLOSED) return;
        if (off < total)
            conn_add_left(c, rbuf + off, total - off);
        else
            c->left_len = 0;
        if ((size_t)n < rcap - have) return; /* drained the socket */
    }
}

static struct sockaddr_in dst;
static int nsources = 0;
static char hostname[64];
static int port;

static void conn_start(conn_t *c, int i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        c->fail = errno;
        c->state = C_CLOSED;
        closed_total++;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsources > 0) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % nsources)); /* 127.0.0.2, .3, ... */
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            c->fail = errno;
            close(fd);
            c->state = C_CLOSED;
            closed_total++;
            return;
        }
    }
    c->fd = fd;
    c->t_start = mono_us();
    c->state = C_CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i + 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        c->fail = errno;
        conn_close(c, -errno);
    }
}

static void conn_connected(conn_t *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        c->fail = err;
        conn_close(c, -err);
        return;
    }
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Cookie: %s\r\n\r\n",
                     c->path, hostname, port, c->cookie);
    c->state = C_HANDSHAKE;
    c->want_out = 1;
    conn_send(c, req, n);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double hist_pct(double q) {
    if (h_count == 0) return -1;
    uint64_t want = (uint64_t)(q * h_count);
    if (want >= h_count) want = h_count - 1;
    uint64_t acc = 0;
    for (uint32_t i = 0; i < HSIZE; i++) {
        acc += hist[i];
        if (acc > want) return i / 1000.0;
    }
    return h_max / 1000.0; /* in the overflow: report the maximum */
}

static int open_receivers(void) {
    int n = 0;
    for (int i = 0; i < nconns; i++)
        if (!conns[i].sender && conns[i].state == C_OPEN) n++;
    return n;
}

static void load_conns(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) die(file);
    int cap = 1024;
    conns = calloc(cap, sizeof *conns);
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        char kind[4], path[1024], cookie[6000];
        if (sscanf(line, "%3s %1023s %5999s", kind, path, cookie) != 3) continue;
        if (nconns == cap) {
            cap *= 2;
            conns = realloc(conns, cap * sizeof *conns);
            memset(conns + nconns, 0, (cap - nconns) * sizeof *conns);
        }
        conn_t *c = &conns[nconns];
        c->fd = -1;
        c->state = C_IDLE;
        c->sender = kind[0] == 'S';
        if (c->sender) nsent_conn = nconns;
        c->path = strdup(path);
        c->cookie = strdup(cookie);
        c->last_seq = -1;
        nconns++;
    }
    fclose(f);
}

static void handle_conn_event(conn_t *c, uint32_t events, int64_t now) {
    if (c->state == C_CLOSED) return;
    if (c->state == C_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) conn_connected(c);
        return;
    }
    if (events & EPOLLOUT) conn_flush(c);
    if (c->state == C_CLOSED) return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_read(c, now);
}

static int client_main(int argc, char **argv) {
    const char *file = NULL;
    int concurrency = 0;
    double connect_timeout = 60;
    strcpy(hostname, "127.0.0.1");
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) snprintf(hostname, sizeof hostname, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) file = argv[i + 1];
        else if (!strcmp(argv[i], "--sources")) nsources = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--server-pid")) server_pid = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--concurrency")) concurrency = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--connect-timeout")) connect_timeout = atof(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!file || !port) {
        fprintf(stderr, "usage: loadgen client --port P --conns FILE ...\n");
        return 2;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    inet_pton(AF_INET, hostname, &dst.sin_addr);
    load_conns(file);
    rbuf = malloc(rcap);
    hist = calloc(HSIZE, sizeof *hist);
    ep = epoll_create1(0);
    {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
        epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    }
    struct epoll_event evs[1024];

    /* -- connect phase ---------------------------------------------------------------------- */
    int64_t t0 = mono_us();
    double cpu0 = cpu_self(), scpu0 = cpu_of(server_pid);
    int next = 0, done = 0;
    if (concurrency <= 0) concurrency = nconns;
    for (;;) {
        int inflight = 0;
        done = 0;
        for (int i = 0; i < next; i++) {
            int s = conns[i].state;
            if (s == C_CONNECTING || s == C_HANDSHAKE || s == C_WAIT_WELCOME) inflight++;
            else done++;
        }
        while (next < nconns && inflight < concurrency) {
            conn_start(&conns[next], next);
            next++;
            inflight++;
        }
        if (next == nconns && inflight == 0) break;
        if (mono_us() - t0 > connect_timeout * 1e6) break;
        int n = epoll_wait(ep, evs, 1024, 50);
        int64_t now = mono_us();
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == 0) continue; /* stdin: commands wait until connected */
            handle_conn_event(&conns[id - 1], evs[k].events, now);
        }
    }
    {
        int64_t t1 = mono_us();
        int64_t *w = malloc(sizeof(int64_t) * (nconns + 1));
        int ok = 0, failed = 0, f_refused = 0, f_reset = 0, f_http = 0, f_timeout = 0, f_other = 0;
        int64_t last = t0;
        for (int i = 0; i < nconns; i++) {
            conn_t *c = &conns[i];
            if (c->state == C_OPEN) {
                w[ok++] = c->t_welcome - c->t_start;
                if (c->t_welcome > last) last = c->t_welcome;
            } else {
                failed++;
                if (c->state != C_CLOSED) f_timeout++;
                else if (c->fail == ECONNREFUSED) f_refused++;
                else if (c->fail == ECONNRESET || c->close_code == -ECONNRESET) f_reset++;
                else if (c->fail < 0) f_http++;
                else f_other++;
            }
        }
        qsort(w, ok, sizeof *w, cmp_i64);
        double cpu = cpu_self() - cpu0, scpu = cpu_of(server_pid) - scpu0;
        double wall = (t1 - t0) / 1e6;
        printf("{\"event\":\"connected\",\"clients\":%d,\"ok\":%d,\"failed\":%d,\"refused\":%d,\"reset\":%d,"
               "\"http_error\":%d,\"timeout\":%d,\"other\":%d,\"elapsed_s\":%.4f,\"all_welcomed_s\":%.4f,"
               "\"welcome_p50_ms\":%.2f,\"welcome_p99_ms\":%.2f,\"welcome_max_ms\":%.2f,"
               "\"gen_cpu_s\":%.3f,\"server_cpu_s\":%.3f}\n",
               nconns, ok, failed, f_refused, f_reset, f_http, f_timeout, f_other, wall, (last - t0) / 1e6,
               ok ? w[ok / 2] / 1000.0 : -1.0, ok ? w[(int)(ok * 0.99) < ok ? (int)(ok * 0.99) : ok - 1] / 1000.0 : -1.0,
               ok ? w[ok - 1] / 1000.0 : -1.0, cpu, scpu);
        fflush(stdout);
        free(w);
    }

    /* -- command phase ---------------------------------------------------------------------- */
    char cmd[4096];
    int cmdlen = 0;
    enum { P_IDLE, P_SEND, P_DRAIN, P_QUIET } phase = P_IDLE;
    double rate = 0, duration = 0, drain = 0;
    int size = 200;
    int64_t st_start = 0, st_send_end = 0, st_deadline = 0, quiet_deadline = 0, last_stale = 0;
    int64_t seq = 0, total_to_send = 0, sent = 0;
    int receivers = 0;
    uint64_t expected = 0, reads0 = 0, frames0 = 0, bytes0 = 0, stale0 = 0, dupes0 = 0;
    int closed0 = 0;
    double cpu_s0 = 0, scpu_s0 = 0, cpu_s1 = 0, scpu_s1 = 0;
    int64_t st_end_measure = 0;
    unsigned char frame[70000], text[66000];

    for (;;) {
        int timeout = phase == P_IDLE ? 1000 : 1;
        int n = epoll_wait(ep, evs, 1024, timeout);
        int64_t now = mono_us();
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id != 0) {
                handle_conn_event(&conns[id - 1], evs[k].events, now);
                continue;
            }
            ssize_t r = read(0, cmd + cmdlen, sizeof cmd - 1 - cmdlen);
            if (r <= 0) goto quit;
            cmdlen += r;
            cmd[cmdlen] = 0;
            char *nl;
            while ((nl = strchr(cmd, '\n'))) {
                *nl = 0;
                if (!strncmp(cmd, "quit", 4)) goto quit;
                if (!strncmp(cmd, "stats", 5)) {
                    printf("{\"event\":\"stats\",\"open\":%d,\"closed\":%d,\"closed_1013\":%d}\n",
                           open_receivers(), closed_total, closed_1013);
                    fflush(stdout);
                } else if (!strncmp(cmd, "step ", 5) && phase == P_IDLE) {
                    if (sscanf(cmd + 5, "%lf %lf %lf %d", &rate, &duration, &drain, &size) == 4) {
                        if (size < 32) size = 32;
                        if (size > 60000) size = 60000;
                        phase = P_SEND;
                        memset(hist, 0, HSIZE * sizeof *hist);
                        h_over = h_count = 0;
                        h_max = 0;
                        received = 0;
                        last_receipt = 0;
                        reads0 = reads, frames0 = frames_read, bytes0 = bytes_read;
                        stale0 = stale, dupes0 = dupes, closed0 = closed_1013;
                        receivers = open_receivers();
                        total_to_send = (int64_t)(rate * duration + 0.5);
                        sent = 0;
                        step_first = seq;
                        step_last = seq + total_to_send - 1;
                        st_start = mono_us();
                        st_send_end = st_start + (int64_t)(duration * 1e6);
                        cpu_s0 = cpu_self();
                        scpu_s0 = cpu_of(server_pid);
                    }
                }
                memmove(cmd, nl + 1, cmdlen - (nl + 1 - cmd) + 1);
                cmdlen -= nl + 1 - cmd;
            }
        }
        if (phase == P_SEND) {
            conn_t *s = nsent_conn >= 0 ? &conns[nsent_conn] : NULL;
            int64_t due = (int64_t)((now - st_start) * rate / 1e6) + 1;
            if (due > total_to_send) due = total_to_send;
            while (s && s->state == C_OPEN && sent < due && s->out_len < 65536) {
                /* {"type":"say","text":"xxxx...#SSSSSSSSSS@TTTTTTTTTTTTTTTT"} */
                int pad = size - 28;
                memset(text, 'x', pad);
                /* the time this message was due, not when it went out: a send held back by the
                   server's back-pressure still counts from its schedule (no coordinated omission) */
                int64_t ts = st_start + (int64_t)((double)sent * 1e6 / rate);
                int tl = pad + sprintf((char *)text + pad, "#%010lld@%016lld", (long long)seq, (long long)ts);
                char payload[66100];
                int pl = sprintf(payload, "{\"type\":\"say\",\"text\":\"%.*s\"}", tl, text);
                int fl = client_frame(frame, 1, (unsigned char *)payload, pl);
                conn_send(s, frame, fl);
                seq++;
                sent++;
            }
            if (sent >= total_to_send || now >= st_send_end) {
                /* messages never sent leave the step's range */
                step_last = step_first + sent - 1;
                seq = step_first + sent;
                expected = (uint64_t)sent * receivers;
                phase = P_DRAIN;
                st_deadline = now + (int64_t)(drain * 1e6);
                int64_t send_wall = now - st_start;
                (void)send_wall;
            }
        }
        if (phase == P_DRAIN) {
            if (received >= expected || now >= st_deadline) {
                cpu_s1 = cpu_self();
                scpu_s1 = cpu_of(server_pid);
                st_end_measure = now;
                phase = P_QUIET;
                last_stale = now;
                quiet_deadline = now + 5000000;
            }
        }
        if (phase == P_QUIET) {
            /* let late frames of this step arrive before the next one starts (not counted) */
            static uint64_t seen = 0;
            uint64_t cur = frames_read;
            if (cur != seen) {
                seen = cur;
                last_stale = now;
            }
            if (now - last_stale >= 200000 || now >= quiet_deadline) {
                int64_t span = (last_receipt > st_send_end ? last_receipt : st_send_end) - st_start;
                double secs = span / 1e6;
                double wall = (st_end_measure - st_start) / 1e6;
                uint64_t lost = expected > received ? expected - received : 0;
                printf("{\"event\":\"step\",\"target_msgs_per_s\":%.1f,\"duration_s\":%.3f,\"receivers\":%d,"
                       "\"sent\":%lld,\"send_rate\":%.1f,\"expected\":%llu,\"received\":%llu,\"lost\":%llu,"
                       "\"late_or_stale\":%llu,\"dupes\":%llu,\"closed_1013\":%d,\"delivered_per_s\":%.1f,"
                       "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
                       "\"gen_cpu\":%.3f,\"server_cpu\":%.3f,\"reads\":%llu,\"frames\":%llu,\"bytes\":%llu}\n",
                       rate, duration, receivers, (long long)sent, sent / duration, (unsigned long long)expected,
                       (unsigned long long)received, (unsigned long long)lost,
                       (unsigned long long)(stale - stale0), (unsigned long long)(dupes - dupes0),
                       closed_1013 - closed0, secs > 0 ? received / secs : 0, hist_pct(0.50), hist_pct(0.90),
                       hist_pct(0.99), hist_pct(0.999), h_max / 1000.0, wall > 0 ? (cpu_s1 - cpu_s0) / wall : 0,
                       wall > 0 ? (scpu_s1 - scpu_s0) / wall : 0, (unsigned long long)(reads - reads0),
                       (unsigned long long)(frames_read - frames0), (unsigned long long)(bytes_read - bytes0));
                fflush(stdout);
                step_first = -1;
                step_last = -2;
                phase = P_IDLE;
            }
        }
    }
quit:
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != C_CLOSED) {
            unsigned char f[16];
            unsigned char code[2] = {0x03, 0xe8};
            int fl = client_frame(f, 8, code, 2);
            if (conns[i].fd >= 0) (void)!write(conns[i].fd, f, fl);
            conn_close(&conns[i], 1000);
        }
    printf("{\"event\":\"bye\"}\n");
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* reference server                                                                            */

typedef struct {
    int fd;
    int open;
    unsigned char *in;
    int in_len, in_cap;
    unsigned char *out;
    int out_len, out_cap;
    int want_out;
} sconn_t;

static sconn_t **subs;
static int nsubs, subs_cap;
static unsigned char *pending;
static size_t pend_len, pend_cap;
static long long next_id = 1;

static void s_close(sconn_t *c) {
    if (c->fd < 0) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->open)
        for (int i = 0; i < nsubs; i++)
            if (subs[i] == c) {
                subs[i] = subs[--nsubs];
                break;
            }
    c->open = 0;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_cap = 0;
    /* the struct itself is kept: later events of this epoll pass may still point at it */
}

static void s_set_out(sconn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* write, keeping what the kernel does not take; a subscriber over 4 MB is dropped */
static int s_write(sconn_t *c, const unsigned char *p, size_t n) {
    if (c->out_len == 0) {
        ssize_t w = write(c->fd, p, n);
        if (w < 0) {
            if (errno != EAGAIN) return -1;
            w = 0;
        }
        p += w;
        n -= w;
    }
    if (n == 0) return 0;
    if (c->out_len + n > 4u << 20) return -1;
    if (c->out_len + (int)n > c->out_cap) {
        c->out_cap = (c->out_len + n) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    s_set_out(c, 1);
    return 0;
}

static void s_pend(const char *json, size_t n) {
    size_t need = pend_len + n + 10;
    if (need > pend_cap) {
        pend_cap = need * 2;
        pending = realloc(pending, pend_cap);
    }
    unsigned char *p = pending + pend_len;
    int h = 0;
    p[h++] = 0x81;
    if (n < 126) p[h++] = n;
    else {
        p[h++] = 126;
        p[h++] = n >> 8;
        p[h++] = n & 0xff;
    }
    memcpy(p + h, json, n);
    pend_len += h + n;
}

static void s_message(const unsigned char *payload, size_t len) {
    const char *key = "\"text\":\"";
    unsigned char *t = memmem(payload, len, key, 8);
    if (!t) return;
    t += 8;
    unsigned char *e = memchr(t, '"', len - (t - payload));
    if (!e) return;
    char json[66000];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ms = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
    int n = snprintf(json, sizeof json,
                     "{\"type\":\"message\",\"id\":\"%lld\",\"room\":\"bench\",\"user\":{\"id\":\"guest:ref\","
                     "\"name\":\"ref\",\"avatar\":null},\"timestamp\":%lld,\"text\":\"%.*s\"}",
                     next_id++, ms, (int)(e - t), t);
    if (n > 0 && n < (int)sizeof json) s_pend(json, n);
}

static void s_read(sconn_t *c) {
    for (;;) {
        if (c->in_cap - c->in_len < 65536) {
            c->in_cap = c->in_len + 131072;
            c->in = realloc(c->in, c->in_cap);
        }
        ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == 0) {
            s_close(c);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN) return;
            s_close(c);
            return;
        }
        c->in_len += n;
        size_t off = 0;
        if (!c->open) {
            unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!end) continue;
            off = end + 4 - c->in;
            static const char resp[] =
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
            static const char welcome[] =
                "{\"type\":\"welcome\",\"room\":\"bench\",\"you\":{\"id\":\"guest:ref\",\"name\":\"ref\","
                "\"avatar\":null},\"members\":[],\"resumed\":false,\"archive\":[]}";
            unsigned char buf[512];
            size_t rl = sizeof resp - 1, wl = sizeof welcome - 1, h = 2;
            memcpy(buf, resp, rl);
            buf[rl] = 0x81;
            if (wl < 126) {
                buf[rl + 1] = wl;
            } else {
                buf[rl + 1] = 126;
                buf[rl + 2] = wl >> 8;
                buf[rl + 3] = wl & 0xff;
                h = 4;
            }
            memcpy(buf + rl + h, welcome, wl);
            if (s_write(c, buf, rl + h + wl) < 0) {
                s_close(c);
                return;
            }
            c->open = 1;
            if (nsubs == subs_cap) {
                subs_cap = subs_cap ? subs_cap * 2 : 1024;
                subs = realloc(subs, subs_cap * sizeof *subs);
            }
            subs[nsubs++] = c;
        }
        while (c->in_len - off >= 2) {
            unsigned char *p = c->in + off;
            int op = p[0] & 0x0f;
            uint64_t len = p[1] & 0x7f;
            size_t h = 2;
            if (len == 126) {
                if (c->in_len - off < 4) break;
                len = (p[2] << 8) | p[3];
                h = 4;
            } else if (len == 127) {
                s_close(c);
                return;
            }
            int masked = p[1] & 0x80;
            if (masked) h += 4;
            if (c->in_len - off < h + len) break;
            unsigned char *pl = p + h;
            if (masked) {
                unsigned char *m = p + h - 4;
                for (uint64_t i = 0; i < len; i++) pl[i] ^= m[i & 3];
            }
            if (op == 1) s_message(pl, len);
            else if (op == 8) {
                s_close(c);
                return;
            }
            off += h + len;
        }
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
}

static int serve_main(int argc, char **argv) {
    int p = 0;
    for (int i = 2; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "--port")) p = atoi(argv[i + 1]);
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int k = 0; k < n; k++) {
            sconn_t *c = evs[k].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    sconn_t *s = calloc(1, sizeof *s);
                    s->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->fd < 0) continue;
            if (evs[k].events & EPOLLOUT) {
                while (c->out_len) {
                    ssize_t w = write(c->fd, c->out, c->out_len);
                    if (w <= 0) break;
                    memmove(c->out, c->out + w, c->out_len - w);
                    c->out_len -= w;
                }
                if (!c->out_len) s_set_out(c, 0);
            }
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) s_read(c);
        }
        if (pend_len) {
            /* one write per subscriber for everything that arrived in this pass */
            for (int i = 0; i < nsubs; i++)
                if (s_write(subs[i], pending, pend_len) < 0) {
                    s_close(subs[i]);
                    i--;
                }
            pend_len = 0;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "client")) return client_main(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "serve")) return serve_main(argc, argv);
    fprintf(stderr, "usage: loadgen client|serve ...\n");
    return 2;
}
