// The demo app nonstop deploys in its tests, its demo and its benchmark.
//
// It stands in for the book's Spring Boot app with nothing but the JDK:
// - GET /profile answers the active profile (-Dspring.profiles.active);
// - it listens on -Dserver.port, else on its profile's port (real1 8081, real2 8082),
//   at 127.0.0.1, or at -Ddemo.bind (0.0.0.0: an app host that nginx reaches from another host);
// - GET / answers "demo VERSION PROFILE", VERSION coming from version.txt in the jar;
// - GET /slow?ms=N answers after N milliseconds (a request in flight during a switch);
// - -Ddemo.startup.delay.ms=N waits N ms before it listens (a slow start-up);
// - on SIGTERM it closes its listening socket and finishes the requests in flight.
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
import java.util.concurrent.atomic.AtomicInteger;

public final class Demo {
    private static final AtomicInteger IN_FLIGHT = new AtomicInteger();

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

    // Close the listening socket at once (stop() does that first), then wait
    // for the requests in flight, at most 30 s, before the JVM exits.
    private static void drain(HttpServer server) {
        Thread closer = new Thread(() -> server.stop(30));
        closer.setDaemon(true);
        closer.start();
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (IN_FLIGHT.get() > 0 && System.nanoTime() < deadline) {
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                return;
            }
        }
        System.out.println("demo: drained, exiting");
    }

    // Counts a request as in flight from its first byte to its last.
    private static HttpHandler counted(HttpHandler inner) {
        return ex -> {
            IN_FLIGHT.incrementAndGet();
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
