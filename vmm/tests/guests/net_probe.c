/*
 * /init of the network test guest (vmm/tests/net.rs): brings eth0 up at 172.16.0.2/30 and
 * talks to the host side at 172.16.0.1 through the virtio-net device:
 *
 *   - UDP: "hello from the guest" to port 5000, waits for the answer, then ROUNDS echoes, timed;
 *   - TCP: connects to port 5001 twice (the second connect() is timed on its own: a kernel's
 *     first one also fills its port table), then sends BULK bytes (so the guest's TSO is used), reads BULK
 *     bytes back (so the host's segments arrive whole), each with its pattern checked; the
 *     host answers once it has read everything, so the time covers both directions.
 *
 * Every result is a line on the console; "NET-PROBE DONE" ends a run that went through, then
 * the guest reboots, which stops the VM.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HOST "172.16.0.1"
#define GUEST "172.16.0.2"
#define ROUNDS 10
#define BULK (256 * 1024)

static void say(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    printf("\n");
    fflush(stdout);
}

static void fail(const char *what) {
    say("NET-PROBE FAIL %s: %s", what, strerror(errno));
    reboot(RB_AUTOBOOT);
    _exit(1);
}

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct sockaddr_in address(const char *ip, int port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin.sin_addr);
    return sin;
}

static void set_timeout(int fd, int seconds) {
    struct timeval tv = {.tv_sec = seconds};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void interface_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) fail("SIOCGIFHWADDR eth0");
    unsigned char *mac = (unsigned char *)ifr.ifr_hwaddr.sa_data;
    say("eth0 mac %02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    struct sockaddr_in sin = address(GUEST, 0);
    memcpy(&ifr.ifr_addr, &sin, sizeof sin);
    if (ioctl(fd, SIOCSIFADDR, &ifr) < 0) fail("SIOCSIFADDR");
    sin = address("255.255.255.252", 0);
    memcpy(&ifr.ifr_netmask, &sin, sizeof sin);
    if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0) fail("SIOCSIFNETMASK");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) fail("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) fail("SIOCSIFFLAGS");
    close(fd);
}

static void udp(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in me = address(GUEST, 4000), host = address(HOST, 5000);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) fail("bind udp");
    if (connect(fd, (struct sockaddr *)&host, sizeof host) < 0) fail("connect udp");
    set_timeout(fd, 1);
    char buf[256];
    /* The first datagram waits for ARP; resend until the host answers. */
    long long started = now_us();
    ssize_t n = -1;
    for (int try = 0; try < 60 && n < 0; try++) {
        if (send(fd, "hello from the guest", 20, 0) < 0) fail("send udp");
        n = recv(fd, buf, sizeof buf - 1, 0);
    }
    if (n < 0) fail("recv udp");
    buf[n] = 0;
    say("udp got %s after %lld us", buf, now_us() - started);
    long long best = -1, total = 0;
    for (int i = 0; i < ROUNDS; i++) {
        long long t0 = now_us();
        if (send(fd, "ping", 4, 0) < 0) fail("send ping");
        if (recv(fd, buf, sizeof buf, 0) < 0) fail("recv pong");
        long long rtt = now_us() - t0;
        total += rtt;
        if (best < 0 || rtt < best) best = rtt;
    }
    say("udp echo rtt us min %lld avg %lld over %d", best, total / ROUNDS, ROUNDS);
    send(fd, "done", 4, 0);
    close(fd);
}

/* A new TCP connection to the host's port 5001; reports how long connect() took. */
static int tcp_connect(const char *which) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    set_timeout(fd, 60);
    struct sockaddr_in host = address(HOST, 5001);
    long long t0 = now_us();
    if (connect(fd, (struct sockaddr *)&host, sizeof host) < 0) fail("connect tcp");
    say("tcp %s connect %lld us", which, now_us() - t0);
    return fd;
}

static void tcp(void) {
    static unsigned char buf[BULK];
    /* The first connect() of a booted kernel also fills its port table: time a second one. */
    close(tcp_connect("first"));
    int fd = tcp_connect("second");
    long long t1 = now_us();
    for (int i = 0; i < BULK; i++) buf[i] = (unsigned char)(i * 7);
    for (size_t done = 0; done < BULK;) {
        ssize_t n = write(fd, buf + done, BULK - done);
        if (n < 0) fail("write tcp");
        done += n;
    }
    shutdown(fd, SHUT_WR);
    memset(buf, 0, sizeof buf);
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, BULK - got);
        if (n < 0) fail("read tcp");
        if (n == 0) break;
        got += n;
        if (got == BULK) break;
    }
    long long t3 = now_us();
    for (size_t i = 0; i < got; i++) {
        if (buf[i] != (unsigned char)(i * 13)) {
            say("NET-PROBE FAIL tcp byte %zu is %u", i, buf[i]);
            reboot(RB_AUTOBOOT);
        }
    }
    say("tcp %d bytes up and %zu back in %lld us", BULK, got, t3 - t1);
    close(fd);
}

int main(void) {
    interface_up();
    udp();
    tcp();
    say("NET-PROBE DONE");
    reboot(RB_AUTOBOOT);
    return 0;
}
