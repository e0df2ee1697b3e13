// A TLS relay on the JDK's TLS (JSSE): the encrypted hop of a harness scenario whose TLS stack
// is Java's (Kafka and Pulsar clients, most JVM services). Usage:
//
//	java Relay PEM SERVICE...
//
// where PEM holds the server's key (PKCS#8 "PRIVATE KEY", EC P-256, as rcgen writes it) and
// certificate, and each SERVICE is IN>OUT, both tls:PORT or tcp:PORT on 127.0.0.1: it accepts on
// IN and, per connection (a thread each), connects to OUT (TCP_NODELAY) and copies what it reads
// on to it, one read and one write per chunk. Its client side accepts any certificate (as the
// harness's do).

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.ByteArrayInputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.X509TrustManager;

public class Relay {
    static final InetAddress LOOPBACK = InetAddress.getLoopbackAddress();

    record End(boolean tls, int port) {
        static End parse(String s) {
            String[] p = s.split(":", 2);
            if (p.length != 2 || !(p[0].equals("tls") || p[0].equals("tcp"))
                    || !p[1].matches("[0-9]{1,5}")) {
                fail("bad end \"" + s + "\": want tls:PORT or tcp:PORT");
            }
            return new End(p[0].equals("tls"), Integer.parseInt(p[1]));
        }
    }

    static void fail(String why) {
        System.err.println("java relay: " + why);
        System.exit(2);
    }

    /// The base64 body of the PEM block labelled `label`.
    static byte[] pemBlock(String pem, String label) {
        String begin = "-----BEGIN " + label + "-----", end = "-----END " + label + "-----";
        int from = pem.indexOf(begin), to = pem.indexOf(end);
        if (from < 0 || to < 0) {
            fail("no " + label + " in the PEM file");
        }
        return Base64.getMimeDecoder().decode(pem.substring(from + begin.length(), to));
    }

    static SSLContext context(Path pemFile) throws Exception {
        String pem = Files.readString(pemFile, StandardCharsets.US_ASCII);
        PrivateKey key = KeyFactory.getInstance("EC")
                .generatePrivate(new PKCS8EncodedKeySpec(pemBlock(pem, "PRIVATE KEY")));
        Certificate cert = CertificateFactory.getInstance("X.509")
                .generateCertificate(new ByteArrayInputStream(pemBlock(pem, "CERTIFICATE")));
        char[] password = "relay".toCharArray();
        KeyStore store = KeyStore.getInstance("PKCS12");
        store.load(null, null);
        store.setKeyEntry("relay", key, password, new Certificate[] {cert});
        KeyManagerFactory keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        keys.init(store, password);
        TrustManager trustAll = new X509TrustManager() {
            public void checkClientTrusted(X509Certificate[] chain, String auth) {}
            public void checkServerTrusted(X509Certificate[] chain, String auth) {}
            public X509Certificate[] getAcceptedIssuers() {
                return new X509Certificate[0];
            }
        };
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(keys.getKeyManagers(), new TrustManager[] {trustAll}, null);
        return ctx;
    }

    public static void main(String[] args) {
        try {
            start(args);
        } catch (Exception e) {
            fail(e.toString());
        }
    }

    static void start(String[] args) throws Exception {
        if (args.length < 2) {
            fail("usage: Relay PEM IN>OUT...");
        }
        SSLContext ctx = context(Path.of(args[0]));
        for (int i = 1; i < args.length; i++) {
            String[] service = args[i].split(">", 2);
            if (service.length != 2) {
                fail("bad service \"" + args[i] + "\": want IN>OUT");
            }
            End from = End.parse(service[0]), to = End.parse(service[1]);
            ServerSocket listener = from.tls()
                    ? ctx.getServerSocketFactory().createServerSocket(from.port(), 50, LOOPBACK)
                    : new ServerSocket(from.port(), 50, LOOPBACK);
            new Thread(() -> serve(ctx, listener, to)).start();
        }
    }

    static void serve(SSLContext ctx, ServerSocket listener, End to) {
        while (true) {
            try {
                Socket in = listener.accept();
                new Thread(() -> relay(ctx, in, to)).start();
            } catch (IOException e) {
                fail(e.toString());
            }
        }
    }

    static void relay(SSLContext ctx, Socket in, End to) {
        try (in; Socket out = to.tls()
                ? ctx.getSocketFactory().createSocket(LOOPBACK, to.port())
                : new Socket(LOOPBACK, to.port())) {
            in.setTcpNoDelay(true);
            out.setTcpNoDelay(true);
            InputStream from = in.getInputStream();
            OutputStream onward = out.getOutputStream();
            byte[] buf = new byte[16 * 1024];
            int n;
            while ((n = from.read(buf)) > 0) {
                onward.write(buf, 0, n);
            }
            // Say goodbye (close_notify on TLS, then FIN) and read until the peer closes:
            // closing with unread bytes (TLS 1.3 session tickets) would reset the connection
            // under the peer's last reads.
            out.shutdownOutput();
            drain(out, buf);
        } catch (IOException e) {
            System.err.println("java relay: " + e);
        }
    }

    /// Reads until the peer closes; a peer gone without close_notify is an end too.
    static void drain(Socket s, byte[] buf) {
        try {
            InputStream back = s.getInputStream();
            while (back.read(buf) >= 0) {}
        } catch (IOException e) {
        }
    }
}
