// pgjdbc through shardgate on the demo topology, as a Spring/Hibernate app reads a large
// result: autocommit off and a fetch size, so the driver binds a named portal and executes it
// a few rows at a time (PortalSuspended, then Execute again), over every shard. The chunked
// read must equal the same read fetched whole; a write between chunks and the commit work.
// Usage: java -cp postgresql.jar JdbcFetchSize.java JDBC_URL
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;

public class JdbcFetchSize {
    static final String READ =
        "select user_id, name from users where user_id >= ? order by user_id";

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0])) {
            c.setAutoCommit(true);
            try (PreparedStatement s =
                    c.prepareStatement("insert into users (user_id, name) values (?, ?)")) {
                for (long id = 5000; id < 5040; id++) {
                    s.setLong(1, id);
                    s.setString(2, "jdbc-" + id);
                    s.executeUpdate();
                }
            }
            List<String> whole = read(c, 0);
            check(whole.size() >= 40, "whole read has " + whole.size() + " rows");

            c.setAutoCommit(false);
            // Several times: pgjdbc switches to a server-prepared statement after 5 uses.
            for (int round = 0; round < 7; round++) {
                List<String> chunked = read(c, 3 + round);
                check(chunked.equals(whole), "round " + round + ": " + chunked + " vs " + whole);
            }
            try (Statement s = c.createStatement()) {
                s.executeUpdate("update users set name = 'jdbc-updated' where user_id = 5000");
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement();
                    ResultSet r = s.executeQuery("select name from users where user_id = 5000")) {
                check(r.next() && r.getString(1).equals("jdbc-updated"), "the update committed");
            }
        }
        System.out.println("OK jdbc");
    }

    static List<String> read(Connection c, int fetchSize) throws Exception {
        List<String> out = new ArrayList<>();
        try (PreparedStatement s = c.prepareStatement(READ)) {
            s.setFetchSize(fetchSize);
            s.setLong(1, 0);
            try (ResultSet r = s.executeQuery()) {
                while (r.next()) {
                    out.add(r.getLong(1) + ":" + r.getString(2));
                }
            }
        }
        return out;
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }
}
