// The demo app nonstop deploys in its tests, its demo and its benchmark.
//
// It stands in for the book's Spring Boot app with nothing but the JDK:
// - GET /profile answers the active profile (-Dspring.profiles.active);
// - it listens on -Dserver.port, else on its profile's port (real1 8081, real2 8082),
//   at 127.0.0.1, or at -Ddemo.bind (0.0.0.0: an app host that nginx reaches from another host);
// - GET / answers "demo VERSION PROFILE", VERSION coming from version.txt in the jar;
// - GET /slow?ms=N answers after N milliseconds (a request in flight during a switch), logging
//   "slow request for N ms began" when it arrives;
// - -Ddemo.startup.delay.ms=N waits N ms before it listens (a slow start-up);
// - on SIGTERM it finishes the requests in flight (each answer then says Connection: close),
//   then closes its listening socket and its connections, never one with an answer begun.
// Fault knobs for the fault tests: -Ddemo.exit.at.startup=CODE exits after the start-up delay,
// -Ddemo.ignore.term=true ignores SIGTERM, -Ddemo.answer=TEXT answers /profile with TEXT.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpHandler;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

public final class Demo {
    private static final AtomicInteger IN_FLIGHT = new AtomicInteger();
    private static final AtomicBoolean TERMINATING = new AtomicBoolean();
    private static final Object GATE = new Object();
    private static boolean closed; // guarded by GATE

    public static void main(String[] args) throws Exception {
        String profile = System.getProperty("spring.profiles.active", "default");
        int port = Integer.getInteger("server.port", defaultPort(profile));
        String version = readVersion();
        String answer = System.getProperty("demo.answer", profile);
        String bind = System.getProperty("demo.bind", "127.0.0.1");

        if (Boolean.getBoolean("demo.ignore.term")) {
            sun.misc.Signal.handle(new sun.misc.Signal("TERM"), sig -> System.out.println("demo: ignoring SIGTERM"));
        }
        long delay = Long.getLong("demo.startup.delay.ms", 0L);
        if (delay > 0) {
            System.out.println("demo: starting up for " + delay + " ms");
            Thread.sleep(delay);
        }
        String exitCode = System.getProperty("demo.exit.at.startup");
        if (exitCode != null) {
            System.err.println("demo: exiting at start-up as asked (demo.exit.at.startup=" + exitCode + ")");
            System.exit(Integer.parseInt(exitCode));
        }

        HttpServer server = HttpServer.create(new InetSocketAddress(bind, port), 512);
        server.setExecutor(Executors.newFixedThreadPool(32));
        server.createContext("/profile", counted(ex -> respond(ex, answer)));
        server.createContext("/slow", counted(ex -> {
            long ms = queryLong(ex, "ms", 2000L);
            // Tests wait for this line: the request is in flight here.
            System.out.println("demo: slow request for " + ms + " ms began");
            System.out.flush();
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            respond(ex, "slow " + ms + " " + version + " " + profile);
        }));
        server.createContext("/", counted(ex -> respond(ex, "demo " + version + " " + profile)));

        Runtime.getRuntime().addShutdownHook(new Thread(() -> drain(server)));
        server.start();
        System.out.println("demo " + version + " (" + profile + ") listening on " + bind + ":" + port);
    }

    // Finish every answer begun, then close every connection, and never the
    // other way round: a connection closed after the status line went out is
    // an answer cut that nginx cannot resend (it has told its client 200).
    // So on SIGTERM every answer says Connection: close (a pooled connection
    // ends after its answer, cleanly); once no request is in flight the gate
    // shuts (a request that arrives later is closed before any byte of an
    // answer, which nginx may resend to the other app); only then does
    // stop() close the listening socket and the connections. stop() alone
    // is not enough: it closes all connections the moment the server's own
    // count of exchanges touches 0, while a request read just then on a
    // pooled connection may already be writing its answer.
    private static void drain(HttpServer server) {
        TERMINATING.set(true);
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (true) {
            synchronized (GATE) {
                if (IN_FLIGHT.get() == 0 || System.nanoTime() >= deadline) {
                    closed = true;
                    break;
                }
            }
            try {
                Thread.sleep(2);
            } catch (InterruptedException e) {
                return;
            }
        }
        server.stop(0);
        System.out.println("demo: drained, exiting");
    }

    // Counts a request as in flight from its first byte to its last, unless
    // the gate has shut: then it is closed unanswered (see drain).
    private static HttpHandler counted(HttpHandler inner) {
        return ex -> {
            synchronized (GATE) {
                if (closed) {
                    ex.close();
                    return;
                }
                IN_FLIGHT.incrementAndGet();
            }
            try {
                inner.handle(ex);
            } finally {
                IN_FLIGHT.decrementAndGet();
            }
        };
    }

    private static void respond(HttpExchange ex, String body) throws IOException {
        try (ex) {
            byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
            ex.getResponseHeaders().set("Content-Type", "text/plain; charset=utf-8");
            if (TERMINATING.get()) {
                ex.getResponseHeaders().set("Connection", "close");
            }
            ex.sendResponseHeaders(200, bytes.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(bytes);
            }
        }
    }

    private static long queryLong(HttpExchange ex, String key, long fallback) {
        String query = ex.getRequestURI().getQuery();
        if (query == null) {
            return fallback;
        }
        for (String pair : query.split("&")) {
            String[] kv = pair.split("=", 2);
            if (kv.length == 2 && kv[0].equals(key)) {
                try {
                    return Long.parseLong(kv[1]);
                } catch (NumberFormatException e) {
                    return fallback;
                }
            }
        }
        return fallback;
    }

    private static int defaultPort(String profile) {
        switch (profile) {
            case "real1": return 8081;
            case "real2": return 8082;
            default: return 8080;
        }
    }

    private static String readVersion() throws IOException {
        try (InputStream in = Demo.class.getResourceAsStream("/version.txt")) {
            return in == null ? "unknown" : new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
        }
    }
}
